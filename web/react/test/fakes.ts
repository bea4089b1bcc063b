// Stand-ins for the browser client with the interface of api/static/rstreams.d.ts: the
// tests drive each stream's state by hand and count the streams (connections) opened.
import type {
  RecentSession,
  RecentSessions,
  ResumeOptions,
  StartOptions,
  Stream,
  StreamEventMap,
  StreamState,
} from "../../../api/static/rstreams.js";
import type { StreamsClient } from "../src/useResumableStream.js";

type Listener = (event: never) => void;

export class FakeStream {
  readonly sessionId: string;
  token: string | null = null;
  state: StreamState;
  closed = false;
  stopped = false;
  readonly finished: Promise<StreamState>;
  private resolveFinished!: (state: StreamState) => void;
  private listeners = new Map<string, Set<Listener>>();

  constructor(sessionId: string) {
    this.sessionId = sessionId;
    this.state = {
      sessionId,
      status: "connecting",
      text: "",
      reasoning: "",
      toolCalls: [],
      chunks: 0,
      cursor: null,
      reconnecting: false,
      attempt: 0,
      transport: null,
      finishReason: null,
      usage: null,
      error: null,
      ended: false,
    };
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
  }

  on<K extends keyof StreamEventMap>(type: K, listener: (event: StreamEventMap[K]) => void) {
    const set = this.listeners.get(type) ?? new Set();
    set.add(listener as Listener);
    this.listeners.set(type, set);
    return () => void set.delete(listener as Listener);
  }

  listenerCount(): number {
    return [...this.listeners.values()].reduce((n, s) => n + s.size, 0);
  }

  /** A new snapshot, as the client makes on every change. */
  update(patch: Partial<StreamState>): void {
    if (this.closed) return;
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners.get("state") ?? []) {
      (listener as (s: StreamState) => void)(this.state);
    }
    if (this.state.ended) this.resolveFinished(this.state);
  }

  chunk(text: string): void {
    const n = this.state.chunks;
    this.update({ status: "running", text: this.state.text + text, chunks: n + 1, cursor: `1-${n}` });
  }

  close(): void {
    this.closed = true;
    this.listeners.clear();
    this.resolveFinished(this.state);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.update({ status: "cancelled", ended: true });
  }

  asStream(): Stream {
    return this as unknown as Stream;
  }
}

export class FakeClient implements StreamsClient {
  /** Every stream opened, by start or resume: one connection each. */
  streams: FakeStream[] = [];
  starts: { prompt: string; options?: StartOptions }[] = [];
  resumes: { sessionId: string; options?: ResumeOptions }[] = [];
  /** Set to make the next start fail, as the client does on a 4xx. */
  refuse: { code: string; message: string; httpStatus: number } | null = null;
  private next = 0;

  async start(prompt: string, options?: StartOptions): Promise<Stream> {
    this.starts.push({ prompt, options });
    await Promise.resolve();
    if (this.refuse) {
      const error = Object.assign(new Error(this.refuse.message), this.refuse);
      this.refuse = null;
      throw error;
    }
    const stream = new FakeStream(`session-${++this.next}`.padEnd(21, "x"));
    this.streams.push(stream);
    return stream.asStream();
  }

  resume(sessionId: string, options?: ResumeOptions): Stream {
    this.resumes.push({ sessionId, options });
    const stream = new FakeStream(sessionId);
    this.streams.push(stream);
    return stream.asStream();
  }

  get open(): FakeStream[] {
    return this.streams.filter((s) => !s.closed);
  }
}

/** RecentSessions in memory. */
export class FakeRecent {
  items: RecentSession[] = [];
  list(): RecentSession[] {
    return this.items.map((s) => ({ ...s }));
  }
  add(session: RecentSession): void {
    const old = this.items.find((s) => s.sessionId === session.sessionId);
    this.items = [{ ...old, ...session }, ...this.items.filter((s) => s !== old)];
  }
  update(sessionId: string, patch: Partial<RecentSession>): void {
    this.items = this.items.map((s) => (s.sessionId === sessionId ? { ...s, ...patch } : s));
  }
  remove(sessionId: string): void {
    this.items = this.items.filter((s) => s.sessionId !== sessionId);
  }
  clear(): void {
    this.items = [];
  }
  asRecent(): RecentSessions {
    return this as unknown as RecentSessions;
  }
}
