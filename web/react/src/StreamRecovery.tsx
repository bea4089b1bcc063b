// <StreamRecovery/>: this browser's recent sessions, each with its last status, a resume
// and a stop button, and a share link with a copy button.
import { useEffect, useId, useRef, useState } from "react";
import type { HTMLAttributes } from "react";
import { ResumableStreams } from "../../../api/static/rstreams.js";
import type { RecentSession, RecentSessions, StreamStatus } from "../../../api/static/rstreams.js";
import { recentSessions, updateRecentSession, useRecentSessions } from "./recent.js";

/** What the component needs of a client: `ResumableStreams`, or a stand-in in tests. */
export interface RecoveryClient {
  status(sessionId: string): Promise<{ status: StreamStatus | string }>;
  stop(sessionId: string): Promise<{ status: string }>;
}

export interface StreamRecoveryProps extends Omit<HTMLAttributes<HTMLElement>, "title"> {
  /** Called with the session the user chose to resume, e.g. `(s) => resumeStream(s.sessionId)`. */
  onResume: (session: RecentSession) => void;
  /** The session on screen: its resume button is disabled. */
  activeSessionId?: string | null;
  /** Called after a stop was accepted (default: nothing more). */
  onStop?: (session: RecentSession) => void;
  /** The link that opens a session elsewhere. Default: this page with `?session=<id>`,
   * and `#token=<stream token>` when there is one. */
  shareUrl?: (session: RecentSession) => string;
  /** The API's origin for status checks and stops ("" is this page's). */
  baseUrl?: string;
  /** An API key (keyed mode). */
  token?: string;
  /** A client to use instead of one built from `baseUrl` and `token`. */
  client?: RecoveryClient;
  /** The list to show (default: this origin's shared list). */
  recent?: RecentSessions;
  /** The heading (default "Recent sessions"). */
  heading?: string;
  /** Sessions shown, newest first (default 10). */
  limit?: number;
}

const TERMINAL = new Set<string>(["completed", "failed", "cancelled"]);

function defaultShareUrl(session: RecentSession): string {
  const url = new URL(globalThis.location?.href ?? "http://localhost/");
  url.search = "";
  url.hash = "";
  url.searchParams.set("session", session.sessionId);
  // Keyed mode: the stream token in the fragment, which browsers send to no server (as
  // the demo page does).
  if (session.token) url.hash = `token=${encodeURIComponent(session.token)}`;
  return url.href;
}

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (an insecure origin) or no permission: select and copy.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const copied = document.execCommand?.("copy") ?? false;
    area.remove();
    return copied;
  }
}

/** The recent sessions of this browser, to resume, stop or share. */
export function StreamRecovery({
  onResume,
  activeSessionId = null,
  onStop,
  shareUrl = defaultShareUrl,
  baseUrl = "",
  token,
  client,
  recent,
  heading = "Recent sessions",
  limit = 10,
  ...rest
}: StreamRecoveryProps) {
  const list = recent ?? recentSessions();
  const sessions = useRecentSessions(list).slice(0, limit);
  const headingId = useId();
  const [notice, setNotice] = useState("");
  const built = useRef<{ key: string; client: ResumableStreams } | null>(null);
  const checked = useRef(new Set<string>());

  const api = (): RecoveryClient => {
    if (client) return client;
    const key = `${baseUrl}\n${token ?? ""}`;
    if (built.current?.key !== key) {
      built.current = { key, client: new ResumableStreams({ baseUrl, apiKey: token }) };
    }
    return built.current.client;
  };

  // A status remembered as live may be stale (the tab was closed mid-answer): ask once.
  useEffect(() => {
    for (const s of sessions) {
      const live = !s.status || !TERMINAL.has(s.status);
      if (!live || s.sessionId === activeSessionId || checked.current.has(s.sessionId)) continue;
      checked.current.add(s.sessionId);
      api()
        .status(s.sessionId)
        .then((info) => updateRecentSession(list, s.sessionId, { status: info.status as StreamStatus }))
        .catch(() => {}); // unknown or expired: keep what was remembered
    }
  });

  const stop = async (session: RecentSession) => {
    try {
      const answer = await api().stop(session.sessionId);
      updateRecentSession(list, session.sessionId, { status: answer.status as StreamStatus });
      setNotice(`Stopped “${session.title}”.`);
      onStop?.(session);
    } catch (e) {
      setNotice(`Could not stop “${session.title}”: ${(e as Error).message ?? e}`);
    }
  };

  const copy = async (session: RecentSession) => {
    const copied = await copyText(shareUrl(session));
    setNotice(copied ? `Link to “${session.title}” copied.` : "Copying failed: copy the link by hand.");
  };

  return (
    <section aria-labelledby={headingId} {...rest}>
      <h2 id={headingId}>{heading}</h2>
      {sessions.length === 0 ? (
        <p>No sessions yet.</p>
      ) : (
        <ul>
          {sessions.map((s) => {
            const status = s.status ?? "unknown";
            const active = s.sessionId === activeSessionId;
            const url = shareUrl(s);
            return (
              <li key={s.sessionId} data-session-id={s.sessionId} aria-current={active || undefined}>
                <span data-role="title">{s.title || s.sessionId}</span>{" "}
                <span data-role="status" aria-label={`Status: ${status}`}>
                  {status}
                </span>{" "}
                <button
                  type="button"
                  onClick={() => onResume(s)}
                  disabled={active}
                  aria-label={`Resume “${s.title || s.sessionId}”`}
                >
                  Resume
                </button>{" "}
                <button
                  type="button"
                  onClick={() => void stop(s)}
                  disabled={TERMINAL.has(status)}
                  aria-label={`Stop “${s.title || s.sessionId}”`}
                >
                  Stop
                </button>{" "}
                <a href={url} aria-label={`Share link to “${s.title || s.sessionId}”`}>
                  Share link
                </a>{" "}
                <button
                  type="button"
                  onClick={() => void copy(s)}
                  aria-label={`Copy the share link to “${s.title || s.sessionId}”`}
                >
                  Copy link
                </button>
              </li>
            );
          })}
        </ul>
      )}
      <p role="status" aria-live="polite">
        {notice}
      </p>
    </section>
  );
}
