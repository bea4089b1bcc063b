import { useChat } from "@ai-sdk/react";
import { ResumableChatTransport } from "@resumable-streams/ai-sdk";
import { DefaultChatTransport } from "ai";
import type { ChatTransport, UIMessage } from "ai";
import { useEffect, useMemo, useState } from "react";
import type { FormEvent } from "react";

type TransportKind = "resumable" | "default";

const MODELS = ["demo", "demo-reasoning", "demo-tools"] as const;

// The tool `demo-tools` is given (an OpenAI function tool, sent in the request body): the
// demo model calls it with arguments derived from the prompt.
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string", description: "The city's name" } },
      required: ["city"],
    },
  },
};

/** A chat id of 21 URL-safe characters (crypto.randomUUID needs a secure context). */
function newChatId(): string {
  const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";
  return Array.from(crypto.getRandomValues(new Uint8Array(21)), (b) => alphabet[b & 63]).join("");
}

function param(name: string): string | null {
  return new URLSearchParams(window.location.search).get(name);
}

/** The chat and the transport live in the URL: a reload or a second tab opens the same chat. */
function setUrl(chatId: string, kind: TransportKind): void {
  const url = new URL(window.location.href);
  url.searchParams.set("chat", chatId);
  url.searchParams.set("transport", kind);
  window.history.replaceState(null, "", url.href);
}

const storageKey = (chatId: string) => `chat-example:${chatId}`;

function loadMessages(chatId: string): UIMessage[] {
  try {
    const stored = JSON.parse(localStorage.getItem(storageKey(chatId)) ?? "[]");
    return Array.isArray(stored) ? stored : [];
  } catch {
    return [];
  }
}

function saveMessages(chatId: string, messages: UIMessage[]): void {
  try {
    localStorage.setItem(storageKey(chatId), JSON.stringify(messages));
  } catch {
    // storage full or refused: the chat still works, a reload just shows less
  }
}

export function App() {
  const [chatId, setChatId] = useState(() => param("chat") || newChatId());
  const [kind, setKind] = useState<TransportKind>(() =>
    param("transport") === "default" ? "default" : "resumable",
  );
  useEffect(() => setUrl(chatId, kind), [chatId, kind]);

  return (
    <main>
      <h1>Resumable LLM streams · AI SDK chat</h1>
      <div className="bar">
        <label>
          Transport{" "}
          <select
            data-testid="transport"
            value={kind}
            onChange={(e) => setKind(e.target.value as TransportKind)}
          >
            <option value="resumable">ResumableChatTransport</option>
            <option value="default">DefaultChatTransport</option>
          </select>
        </label>
        <span>
          Chat <code data-testid="chat-id">{chatId}</code>
        </span>
        <button type="button" data-testid="new-chat" onClick={() => setChatId(newChatId())}>
          New chat
        </button>
      </div>
      {/* A new transport or chat is a new useChat: remount rather than swap under it. */}
      <Chat key={`${chatId}:${kind}`} chatId={chatId} kind={kind} />
    </main>
  );
}

function Chat({ chatId, kind }: { chatId: string; kind: TransportKind }) {
  const transport = useMemo<ChatTransport<UIMessage>>(
    () =>
      kind === "resumable"
        ? new ResumableChatTransport({ api: "/api/chat" })
        : new DefaultChatTransport({ api: "/api/chat" }),
    [kind],
  );
  const [stored] = useState(() => loadMessages(chatId));
  const [finish, setFinish] = useState("");
  const { messages, sendMessage, status, stop, error } = useChat({
    id: chatId,
    transport,
    messages: stored,
    // On load, follow the answer this chat is generating, if any (GET /api/chat/<id>/stream).
    resume: true,
    onFinish: ({ messages: all, finishReason, isAbort, isError }) => {
      saveMessages(chatId, all);
      setFinish(finishReason ?? (isAbort ? "aborted" : isError ? "error" : "ended"));
    },
  });
  // Keep the question too, so a reload mid-answer shows it above the resumed answer.
  useEffect(() => {
    if (status === "submitted") saveMessages(chatId, messages);
  }, [chatId, status, messages]);

  const [prompt, setPrompt] = useState("Explain quantum computing");
  const [model, setModel] = useState<string>("demo");
  const [maxTokens, setMaxTokens] = useState("60");
  const busy = status === "submitted" || status === "streaming";

  const send = (event: FormEvent) => {
    event.preventDefault();
    const tokens = Number.parseInt(maxTokens, 10);
    setFinish("");
    void sendMessage(
      { text: prompt },
      {
        body: {
          model,
          ...(tokens > 0 ? { max_tokens: tokens } : {}),
          ...(model === "demo-tools" ? { tools: [WEATHER_TOOL] } : {}),
        },
      },
    );
  };

  // stop() only stops this page from following (as with any AI SDK transport); the
  // DELETE stops the generation on the server.
  const stopAnswer = async () => {
    await fetch(`/api/chat/${encodeURIComponent(chatId)}/stream`, { method: "DELETE" }).catch(() => {});
    await stop();
  };

  return (
    <>
      <form onSubmit={send} aria-label="Ask">
        <textarea
          data-testid="prompt"
          aria-label="Prompt"
          value={prompt}
          onChange={(e) => setPrompt(e.target.value)}
          required
        />
        <label>
          Model{" "}
          <select data-testid="model" value={model} onChange={(e) => setModel(e.target.value)}>
            {MODELS.map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
        </label>
        <label>
          Max tokens{" "}
          <input
            data-testid="max-tokens"
            type="number"
            min={1}
            value={maxTokens}
            onChange={(e) => setMaxTokens(e.target.value)}
          />
        </label>
        <button type="submit" data-testid="send" disabled={busy}>
          Send
        </button>
        <button type="button" data-testid="stop" onClick={() => void stopAnswer()} disabled={!busy}>
          Stop
        </button>
      </form>
      <div className="bar">
        <span>
          Status{" "}
          <span className="badge" data-testid="status" role="status">
            {status}
          </span>
        </span>
        {finish && (
          <span>
            Finish <span data-testid="finish">{finish}</span>
          </span>
        )}
      </div>
      {error && (
        <p className="error" data-testid="error" role="alert">
          {error.message}
        </p>
      )}
      <div className="messages" aria-live="polite">
        {messages.map((message) => (
          <Message key={message.id} message={message} />
        ))}
      </div>
    </>
  );
}

function Message({ message }: { message: UIMessage }) {
  return (
    <article className="message" data-testid="message" data-role={message.role} data-message-id={message.id}>
      <div className="role">{message.role}</div>
      {message.parts.map((part, n) => {
        if (part.type === "text") {
          return (
            <div key={n} className="text" data-testid="text">
              {part.text}
            </div>
          );
        }
        if (part.type === "reasoning") {
          return (
            <details key={n} className="reasoning" data-testid="reasoning">
              <summary>Reasoning{part.state === "streaming" ? "…" : ""}</summary>
              <div data-testid="reasoning-text">{part.text}</div>
            </details>
          );
        }
        if (part.type === "dynamic-tool" || part.type.startsWith("tool-")) {
          const tool = part as { type: string; toolName?: string; state: string; input?: unknown };
          const name = tool.toolName ?? tool.type.slice("tool-".length);
          return (
            <div key={n} className="tool" data-testid="tool-call" data-tool-name={name} data-state={tool.state}>
              Tool call <code>{name}</code> <span className="role">{tool.state}</span>
              <pre data-testid="tool-input">{tool.input === undefined ? "" : JSON.stringify(tool.input, null, 2)}</pre>
            </div>
          );
        }
        return null; // step-start and parts this example does not show
      })}
    </article>
  );
}
