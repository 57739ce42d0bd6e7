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

interface Due {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * A clock whose timers share one timer of `base`: for many short timers
 * (a worker's punch rounds wake thousands of times a second), where each of
 * Deno's own costs an object, two closures and an entry in its timer table.
 * A timer's due time is rounded up to the next multiple of `resolutionMs`
 * (never early, at most that late), so timers due together fire together;
 * they fire in order, and a cancelled one is dropped when it comes up.
 *
 * @example
 * ```ts
 * const clock = coarseClock(systemClock);
 * clock.setTimeout(() => console.log("soon"), 50);
 * ```
 */
export function coarseClock(base: Clock, resolutionMs = 5): Clock {
  const heap: Due[] = [];
  let seq = 0;
  let armed: { at: number; id: TimerId } | undefined;
  const before = (a: Due, b: Due) => a.at < b.at || (a.at === b.at && a.seq < b.seq);
  const push = (due: Due) => {
    heap.push(due);
    for (let i = heap.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i], heap[parent])) break;
      const swap = heap[i];
      heap[i] = heap[parent];
      heap[parent] = swap;
      i = parent;
    }
  };
  const pop = (): Due => {
    const top = heap[0];
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      for (let i = 0;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && before(heap[l], heap[m])) m = l;
        if (r < heap.length && before(heap[r], heap[m])) m = r;
        if (m === i) break;
        const swap = heap[i];
        heap[i] = heap[m];
        heap[m] = swap;
        i = m;
      }
    }
    return top;
  };
  const arm = () => {
    while (heap.length > 0 && heap[0].cancelled) pop();
    if (heap.length === 0) return;
    const at = heap[0].at;
    if (armed && armed.at <= at) return;
    if (armed) base.clearTimeout(armed.id);
    const id = base.setTimeout(fire, Math.max(0, at - base.now()));
    armed = { at, id };
  };
  const fire = () => {
    armed = undefined;
    const now = base.now();
    while (heap.length > 0 && heap[0].at <= now) {
      const due = pop();
      if (due.cancelled) continue;
      try {
        due.fn();
      } catch (error) {
        reportError(error); // as a timer of its own would: the others still fire
      }
    }
    arm();
  };
  return {
    now: () => base.now(),
    setTimeout: (fn, ms) => {
      const at = Math.ceil((base.now() + Math.max(0, ms)) / resolutionMs) * resolutionMs;
      const due: Due = { at, seq: seq++, fn, cancelled: false };
      push(due);
      arm();
      return due;
    },
    clearTimeout: (id) => {
      if (id && typeof id === "object" && "cancelled" in id) (id as Due).cancelled = true;
    },
  };
}
