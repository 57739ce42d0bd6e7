/**
 * What a session's frames say, read before anything is handled: a text
 * frame's size (`MAX_MESSAGE_BYTES`, 1009), its parse (an `error` answer)
 * and the session's message rate (1008); a binary frame must be a relay
 * frame (1003). Each refusal is logged with the worker's id.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import { type ClientMessage, ProtocolError } from "../protocol/messages.ts";
import { parseClientMessage } from "../protocol/parse.ts";
import { parseRelayFrame, type RelayFrame } from "../protocol/relay_frame.ts";
import { utf8LengthExceeds } from "./http.ts";
import type { Session } from "./session.ts";

/** What {@linkcode readText} checks against. */
export interface TextLimits {
  maxMessageBytes: number;
  logger: Logger;
}

/**
 * The message in a text frame, or undefined when there is none to handle
 * (the session was answered with an error, or closed).
 */
export function readText(
  session: Session,
  data: string,
  now: number,
  o: TextLimits,
): ClientMessage | undefined {
  if (utf8LengthExceeds(data, o.maxMessageBytes)) {
    o.logger.warn("worker sent an oversize message", {
      worker_id: session.workerId,
      length: data.length,
      limit: o.maxMessageBytes,
    });
    session.close(CloseCode.MESSAGE_TOO_BIG, CloseReason.TOO_BIG);
    return undefined;
  }
  let message: ClientMessage;
  try {
    message = parseClientMessage(data);
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    if (!withinRate(session, now, o.logger)) return undefined;
    o.logger.info("worker sent an invalid message", {
      worker_id: session.workerId,
      code: error.code,
      error: error.message,
    });
    session.send({ type: "error", code: error.code, message: error.message });
    return undefined;
  }
  // Relayed frames have their own budget (the peer directory's), so data
  // cannot starve a worker's control messages, nor the reverse.
  if (message.type !== "relay" && !withinRate(session, now, o.logger)) return undefined;
  return message;
}

/** Spends one of the session's message tokens; none left closes it with 1008. */
function withinRate(session: Session, now: number, logger: Logger): boolean {
  if (session.bucket.take(now)) return true;
  logger.warn("worker exceeded the message rate", { worker_id: session.workerId });
  session.close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED);
  return false;
}

/**
 * The relay frame in a binary frame, or undefined when it is none: the
 * seed's protocol is text, so anything else binary closes the session (1003).
 */
export function readBinary(
  session: Session,
  data: unknown,
  logger: Logger,
): RelayFrame | undefined {
  if (data instanceof ArrayBuffer) {
    try {
      return parseRelayFrame(new Uint8Array(data));
    } catch {
      // Not a relay frame: refused below.
    }
  }
  logger.warn("worker sent a binary frame that is not a relay frame", {
    worker_id: session.workerId,
  });
  session.close(CloseCode.UNSUPPORTED_DATA, CloseReason.BINARY);
  return undefined;
}

/** `prove_key`: the answer to the pending challenge, or an error when none is pending. */
export function answerChallenge(session: Session, signature: string): void {
  if (session.proof) return session.proof.resolve(signature);
  session.send({
    type: "error",
    code: "invalid_message",
    message: "Cannot use prove_key: no challenge is pending",
  });
}
