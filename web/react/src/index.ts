export { useResumableStream, toStreamError } from "./useResumableStream.js";
export type {
  ResumableStreamStatus,
  StreamsClient,
  UseResumableStreamOptions,
  UseResumableStreamResult,
} from "./useResumableStream.js";
export { StreamRecovery } from "./StreamRecovery.js";
export type { RecoveryClient, StreamRecoveryProps } from "./StreamRecovery.js";
export {
  forgetSession,
  recentSessions,
  rememberSession,
  updateRecentSession,
  useRecentSessions,
} from "./recent.js";
// The browser client itself, for anything the hook does not cover.
export { RecentSessions, ResumableStreams, ResumableStreamsError } from "../../../api/static/rstreams.js";
export type {
  BackoffOptions,
  ClientOptions,
  RecentSession,
  ResumeOptions,
  SessionInfo,
  StartOptions,
  Stream,
  StreamError,
  StreamEventMap,
  StreamState,
  StreamStatus,
  ToolCall,
  Transport,
  Usage,
} from "../../../api/static/rstreams.js";
