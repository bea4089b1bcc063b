export { ResumableChatTransport } from "./transport.js";
export type { ResumableChatTransportOptions } from "./transport.js";
export {
  UIMessageChunkMapper,
  defaultMessageId,
  errorText,
  toFinishReason,
  toUIMessageChunks,
} from "./mapping.js";
export type { SessionEvent } from "./mapping.js";
