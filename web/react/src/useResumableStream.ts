// useResumableStream: React state over one Stream of the browser client.
//
// The client (api/static/rstreams.js) does all the connecting, reconnecting and
// de-duplicating; this hook only keeps one Stream at a time, maps its state snapshots to
// React state, and closes it when the component unmounts or moves to another session.
import { useCallback, useEffect, useRef, useState } from "react";
import { ResumableStreams } from "../../../api/static/rstreams.js";
import type {
  BackoffOptions,
  ResumeOptions,
  StartOptions,
  Stream,
  StreamError,
  StreamState,
  StreamStatus,
  ToolCall,
  Transport,
} from "../../../api/static/rstreams.js";
import { recentSessions, rememberSession, updateRecentSession } from "./recent.js";
import type { RecentSessions } from "../../../api/static/rstreams.js";

/** What the hook needs of a client: `ResumableStreams`, or a stand-in in tests. */
export interface StreamsClient {
  start(prompt: string, options?: StartOptions): Promise<Stream>;
  resume(sessionId: string, options?: ResumeOptions): Stream;
}

export interface UseResumableStreamOptions {
  /** The API's origin, e.g. "https://api.example.com"; "" (default) is this page's origin. */
  baseUrl?: string;
  /** An API key (keyed mode), sent as `Authorization: Bearer` on HTTP requests. */
  token?: string;
  /** `auto` (default), `ws` or `sse`. */
  transport?: Transport;
  /** Reconnect backoff of the client. */
  backoff?: BackoffOptions;
  /** A client to use instead of one built from the options above. */
  client?: StreamsClient;
  /** Where started and resumed sessions are remembered for `<StreamRecovery/>`; `false`
   * remembers nothing. Default: this origin's shared list (`rstreams:recent`). */
  recent?: RecentSessions | false;
}

/** The stream's status, or `idle` before anything was started or resumed. */
export type ResumableStreamStatus = StreamStatus | "idle";

export interface UseResumableStreamResult {
  /** Create a session and follow it; resolves with its id. The second argument is a
   * model id or the start options. Rejects when the API refuses (the error is also in
   * `error`). */
  startStream: (prompt: string, modelOrOptions?: string | StartOptions) => Promise<string>;
  /** Follow an existing session: replays what was written, then follows live. Calling it
   * again for the session already followed does nothing. */
  resumeStream: (sessionId: string, options?: ResumeOptions) => void;
  /** Cancel the generation on the server; the stream then ends `cancelled`. */
  stopStream: () => Promise<void>;
  /** Stop following without cancelling (generation goes on on the server). */
  closeStream: () => void;
  /** The answer's text so far. */
  content: string;
  /** The model's reasoning so far ("" for a model that streams none). */
  reasoning: string;
  /** The answer's tool calls so far; their `arguments` are whole JSON once it ends. */
  toolCalls: ToolCall[];
  status: ResumableStreamStatus;
  /** Chunks received. */
  chunks: number;
  /** True from a start or resume until the session ends. */
  isStreaming: boolean;
  /** True while the link is down and the client is reconnecting. */
  isReconnecting: boolean;
  error: StreamError | null;
  sessionId: string | null;
  /** The stream token the stream follows with (keyed mode: from the start, or given to
   * `resumeStream`), for a share link; null without one. */
  streamToken: string | null;
  /** The client's last snapshot, for anything else (cursor, transport, usage...). */
  state: StreamState | null;
}

interface View {
  state: StreamState | null;
  token: string | null;
  status: ResumableStreamStatus;
  error: StreamError | null;
}

const IDLE: View = { state: null, token: null, status: "idle", error: null };
const ACTIVE = new Set<ResumableStreamStatus>([
  "connecting",
  "queued",
  "running",
  "reconnecting",
]);

function viewOf(stream: Stream, state: StreamState): View {
  return { state, token: stream.token ?? null, status: state.status, error: state.error };
}

/** Any thrown value as a StreamError. */
export function toStreamError(e: unknown): StreamError {
  if (e && typeof e === "object" && "message" in e) {
    const err = e as { code?: unknown; message: unknown; httpStatus?: unknown };
    return {
      code: typeof err.code === "string" ? err.code : "network",
      message: String(err.message),
      ...(typeof err.httpStatus === "number" ? { httpStatus: err.httpStatus } : {}),
    };
  }
  return { code: "network", message: String(e) };
}

interface Followed {
  stream: Stream;
  unsubscribe: () => void;
}

/** Start, resume and follow one resumable stream at a time. */
export function useResumableStream(
  options: UseResumableStreamOptions = {},
): UseResumableStreamResult {
  const [view, setView] = useState<View>(IDLE);
  const followed = useRef<Followed | null>(null);
  // Bumped by every start, resume and unmount: a start that resolves after a newer call
  // closes its stream instead of showing it.
  const generation = useRef(0);
  const mounted = useRef(false);
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const built = useRef<{ key: string; client: ResumableStreams } | null>(null);

  const client = useCallback((): StreamsClient => {
    const o = optionsRef.current;
    if (o.client) return o.client;
    const key = JSON.stringify([o.baseUrl ?? "", o.token ?? "", o.transport ?? "", o.backoff]);
    if (built.current?.key !== key) {
      built.current = {
        key,
        client: new ResumableStreams({
          baseUrl: o.baseUrl ?? "",
          apiKey: o.token,
          transport: o.transport,
          backoff: o.backoff,
        }),
      };
    }
    return built.current.client;
  }, []);

  const recent = useCallback((): RecentSessions | null => {
    const o = optionsRef.current.recent;
    return o === false ? null : (o ?? recentSessions());
  }, []);

  const release = useCallback(() => {
    const current = followed.current;
    followed.current = null;
    if (current) {
      current.unsubscribe();
      current.stream.close();
    }
  }, []);

  const follow = useCallback(
    (stream: Stream) => {
      release();
      let lastStatus = stream.state.status;
      const unsubscribe = stream.on("state", (state) => {
        if (followed.current?.stream !== stream) return;
        setView(viewOf(stream, state));
        if (state.status !== lastStatus) {
          lastStatus = state.status;
          const list = recent();
          if (list && state.status !== "connecting") {
            updateRecentSession(list, stream.sessionId, { status: state.status });
          }
        }
      });
      followed.current = { stream, unsubscribe };
      setView(viewOf(stream, stream.state));
    },
    [release, recent],
  );

  const startStream = useCallback(
    async (prompt: string, modelOrOptions?: string | StartOptions): Promise<string> => {
      const mine = ++generation.current;
      release();
      setView({ ...IDLE, status: "connecting" });
      const startOptions =
        typeof modelOrOptions === "string" ? { model: modelOrOptions } : (modelOrOptions ?? {});
      let stream: Stream;
      try {
        stream = await client().start(prompt, startOptions);
      } catch (e) {
        if (mine === generation.current) setView({ ...IDLE, status: "failed", error: toStreamError(e) });
        throw e;
      }
      if (mine !== generation.current) {
        stream.close(); // superseded by a newer start or resume, or unmounted
        return stream.sessionId;
      }
      follow(stream);
      const list = recent();
      if (list) {
        rememberSession(list, {
          sessionId: stream.sessionId,
          title: titleOf(prompt, startOptions),
          createdAt: new Date().toISOString(),
          status: stream.state.status === "connecting" ? "queued" : stream.state.status,
          ...streamTokenOf(stream),
        });
      }
      return stream.sessionId;
    },
    [client, follow, recent, release],
  );

  const resumeStream = useCallback(
    (sessionId: string, resumeOptions?: ResumeOptions) => {
      if (followed.current?.stream.sessionId === sessionId) return;
      generation.current++;
      const list = recent();
      const known = list?.list().find((s) => s.sessionId === sessionId);
      const token = resumeOptions?.token ?? known?.token;
      const stream = client().resume(sessionId, token ? { ...resumeOptions, token } : resumeOptions);
      follow(stream);
      if (list) {
        rememberSession(list, {
          sessionId,
          title: known?.title ?? `Session ${sessionId.slice(0, 8)}`,
          createdAt: known?.createdAt ?? new Date().toISOString(),
          ...(known?.status ? { status: known.status } : {}),
          ...(token ? { token } : {}),
        });
      }
    },
    [client, follow, recent],
  );

  const stopStream = useCallback(async () => {
    const current = followed.current;
    if (!current) return;
    try {
      await current.stream.stop();
    } catch (e) {
      if (followed.current === current) setView((v) => ({ ...v, error: toStreamError(e) }));
    }
  }, []);

  const closeStream = useCallback(() => {
    generation.current++;
    release();
  }, [release]);

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
      // StrictMode unmounts and mounts again at once on the first mount: close only if the
      // component is still unmounted a moment later, so the stream it follows (and its
      // connection) carries on instead of being replaced by a second one.
      setTimeout(() => {
        if (mounted.current) return;
        generation.current++;
        release();
      }, 0);
    };
  }, [release]);

  const { state, token, status, error } = view;
  return {
    startStream,
    resumeStream,
    stopStream,
    closeStream,
    content: state?.text ?? "",
    reasoning: state?.reasoning ?? "",
    toolCalls: state?.toolCalls ?? NO_CALLS,
    status,
    chunks: state?.chunks ?? 0,
    isStreaming: ACTIVE.has(status) && !state?.ended,
    isReconnecting: state?.reconnecting ?? false,
    error,
    sessionId: state?.sessionId ?? null,
    streamToken: token,
    state,
  };
}

const NO_CALLS: ToolCall[] = [];

function titleOf(prompt: string, options: StartOptions): string {
  const last = options.messages?.at(-1)?.content;
  const text = prompt || (typeof last === "string" ? last : "");
  const line = text.trim().replace(/\s+/g, " ");
  return line.length > 60 ? `${line.slice(0, 59)}…` : line;
}

/** The stream token a start got (keyed mode), so the recent list can follow it again. */
function streamTokenOf(stream: Stream): { token?: string } {
  return stream.token ? { token: stream.token } : {};
}
