/**
 * Time as a dependency: production code takes a {@linkcode Clock} so tests can
 * drive timers instantly and deterministically instead of sleeping.
 *
 * @module
 */

/** Opaque handle of a scheduled timer. */
export type TimerId = unknown;

/** The clock and timers a component uses. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Runs `fn` once after `ms` milliseconds. */
  setTimeout(fn: () => void, ms: number): TimerId;
  /** Cancels a timer; unknown or fired ids are ignored. */
  clearTimeout(id: TimerId): void;
}

/** The real clock. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

/** Options for {@linkcode delay}. */
export interface DelayOptions {
  /** Rejects with `signal.reason` when aborted. */
  signal?: AbortSignal;
  /** @default {systemClock} */
  clock?: Clock;
}

/**
 * Resolves after `ms` milliseconds, or rejects with `signal.reason` as soon as
 * the signal aborts.
 *
 * @example
 * ```ts
 * await delay(100, { signal: AbortSignal.timeout(1000) });
 * ```
 */
export function delay(ms: number, options: DelayOptions = {}): Promise<void> {
  const { signal, clock = systemClock } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clock.clearTimeout(id);
      reject(signal!.reason);
    };
    const id = clock.setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Waits until `promise` settles or `ms` pass, whichever is first, and leaves
 * no timer behind; never rejects. For bounded waits at shutdown.
 *
 * @example
 * ```ts
 * await settleWithin(server.finished, 1000);
 * ```
 */
export async function settleWithin(
  promise: Promise<unknown>,
  ms: number,
  clock: Clock = systemClock,
): Promise<void> {
  const timeout = new AbortController();
  await Promise.race([promise, delay(ms, { signal: timeout.signal, clock })]).catch(() => {});
  timeout.abort();
}
