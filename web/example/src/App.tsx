import { useEffect, useState } from "react";
import type { FormEvent } from "react";
import { StreamRecovery, useResumableStream } from "@resumable-streams/react";

/** The session in the page's URL (`?session=`), so a reload or a shared link resumes it. */
function sessionInUrl(): string | null {
  return new URLSearchParams(window.location.search).get("session");
}

/** A stream token in the URL's fragment (keyed mode), which browsers send to no server. */
function tokenInUrl(): string | undefined {
  return new URLSearchParams(window.location.hash.slice(1)).get("token") ?? undefined;
}

function linkTo(sessionId: string, token?: string | null): string {
  const url = new URL(window.location.href);
  url.search = "";
  url.hash = token ? `token=${encodeURIComponent(token)}` : "";
  url.searchParams.set("session", sessionId);
  return url.href;
}

export function App() {
  const { startStream, resumeStream, stopStream, content, status, chunks, isStreaming, isReconnecting, error, sessionId, streamToken } =
    useResumableStream({ baseUrl: "" });
  const [prompt, setPrompt] = useState("Explain quantum computing");
  const [model, setModel] = useState("demo");
  const [maxTokens, setMaxTokens] = useState("200");

  // Resume the session of the URL once on load (StrictMode runs this twice; the hook
  // keeps one stream).
  useEffect(() => {
    const id = sessionInUrl();
    const token = tokenInUrl();
    if (id) resumeStream(id, token ? { token } : undefined);
  }, [resumeStream]);

  // Keep the URL on the session shown.
  useEffect(() => {
    if (sessionId && (sessionInUrl() !== sessionId || (streamToken && tokenInUrl() !== streamToken))) {
      window.history.replaceState(null, "", linkTo(sessionId, streamToken));
    }
  }, [sessionId, streamToken]);

  const send = (event: FormEvent) => {
    event.preventDefault();
    const tokens = Number.parseInt(maxTokens, 10);
    startStream(prompt, { model, ...(tokens > 0 ? { max_tokens: tokens } : {}) }).catch(() => {
      // shown through `error`
    });
  };

  return (
    <main>
      <h1>Resumable LLM streams · React</h1>
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
          <select value={model} onChange={(e) => setModel(e.target.value)}>
            <option value="demo">demo</option>
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
        <button type="submit" data-testid="send">
          Send
        </button>
        <button type="button" data-testid="stop" onClick={() => void stopStream()} disabled={!isStreaming || !sessionId}>
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
        <span>
          Chunks <span data-testid="chunks">{chunks}</span>
        </span>
        {isReconnecting && <span data-testid="reconnecting">reconnecting…</span>}
        {sessionId && (
          <a data-testid="share-link" href={linkTo(sessionId, streamToken)}>
            Share link
          </a>
        )}
      </div>
      {error && (
        <p className="error" data-testid="error" role="alert">
          [{error.code}] {error.message}
        </p>
      )}
      <div className="answer" data-testid="answer" aria-live="polite" aria-label="Answer">
        {content}
      </div>
      <StreamRecovery
        data-testid="recent"
        activeSessionId={sessionId}
        onResume={(s) => resumeStream(s.sessionId, s.token ? { token: s.token } : undefined)}
        shareUrl={(s) => linkTo(s.sessionId, s.token)}
      />
    </main>
  );
}
