// This browser's recent sessions (the client's RecentSessions, in localStorage), with a
// way for components to hear of changes made in this tab; other tabs' changes arrive as
// `storage` events.
import { useCallback, useRef, useSyncExternalStore } from "react";
import { RecentSessions } from "../../../api/static/rstreams.js";
import type { RecentSession } from "../../../api/static/rstreams.js";

let shared: RecentSessions | null = null;
const listeners = new Set<() => void>();

/** The list shared with the demo page (storage key `rstreams:recent`). */
export function recentSessions(): RecentSessions {
  shared ??= new RecentSessions();
  return shared;
}

function notify(): void {
  for (const listener of [...listeners]) listener();
}

/** Add a session (or move it to the front) and tell the components. */
export function rememberSession(list: RecentSessions, session: RecentSession): void {
  list.add(session);
  notify();
}

/** Update a remembered session and tell the components. */
export function updateRecentSession(
  list: RecentSessions,
  sessionId: string,
  patch: Partial<RecentSession>,
): void {
  if (!list.list().some((s) => s.sessionId === sessionId)) return;
  list.update(sessionId, patch);
  notify();
}

/** Forget a session and tell the components. */
export function forgetSession(list: RecentSessions, sessionId: string): void {
  list.remove(sessionId);
  notify();
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  const onStorage = () => listener();
  globalThis.addEventListener?.("storage", onStorage);
  return () => {
    listeners.delete(listener);
    globalThis.removeEventListener?.("storage", onStorage);
  };
}

/** The sessions of `list`, newest first, kept current. */
export function useRecentSessions(list: RecentSessions = recentSessions()): RecentSession[] {
  // list() builds a new array on every call: keep the last one while its JSON is the
  // same, as useSyncExternalStore needs a stable snapshot.
  const cache = useRef<{ json: string; value: RecentSession[] }>({ json: "[]", value: [] });
  const getSnapshot = useCallback(() => {
    const value = list.list();
    const json = JSON.stringify(value);
    if (json !== cache.current.json) cache.current = { json, value };
    return cache.current.value;
  }, [list]);
  return useSyncExternalStore(subscribe, getSnapshot, getSnapshot);
}
