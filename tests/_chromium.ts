/**
 * Debian's chromium, headless, driven over the Chrome DevTools Protocol
 * from the test itself (a WebSocket; no npm package).
 */

import { Proc, toolMissing, within } from "./_helpers.ts";

/** Why chromium cannot run here, or undefined. */
export function chromiumUnavailable(): Promise<string | undefined> {
  return toolMissing("chromium", ["--version"], "chromium");
}

type Message = {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  sessionId?: string;
  result?: Record<string, unknown>;
  error?: { message: string };
};

/** A headless chromium and one CDP connection to it. */
export class Browser {
  #proc: Proc;
  #socket: WebSocket;
  #dir: string;
  #next = 1;
  #pending = new Map<
    number,
    { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void }
  >();
  /** Console messages and exceptions of every page, for failure messages and CSP checks. */
  readonly console: string[] = [];

  private constructor(proc: Proc, socket: WebSocket, dir: string) {
    this.#proc = proc;
    this.#socket = socket;
    this.#dir = dir;
    socket.onmessage = (e) => {
      const m = JSON.parse(String(e.data)) as Message;
      if (m.id !== undefined) {
        const p = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        if (m.error) p?.reject(new Error(m.error.message));
        else p?.resolve(m.result ?? {});
      } else if (m.method === "Runtime.consoleAPICalled") {
        const args = (m.params?.args as { value?: unknown }[] | undefined) ?? [];
        this.console.push(`console: ${args.map((a) => String(a.value)).join(" ")}`);
      } else if (m.method === "Runtime.exceptionThrown" || m.method === "Log.entryAdded") {
        this.console.push(JSON.stringify(m.params));
      }
    };
  }

  static async launch(): Promise<Browser> {
    const dir = await Deno.makeTempDir({ prefix: "holepunch-chromium-" });
    const proc = new Proc("chromium", [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--remote-debugging-port=0",
      `--user-data-dir=${dir}`,
      "--window-size=1400,900",
      "about:blank",
    ], {});
    const line = await proc.waitForLine((l) => /DevTools listening on ws:/.test(l.message), 30_000);
    const url = /ws:\/\/\S+/.exec(line.message)![0];
    const socket = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = () => reject(new Error(`cannot reach chromium at ${url}`));
    });
    return new Browser(proc, socket, dir);
  }

  /** Sends a CDP command (to a page when `sessionId` is given). */
  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
  ): Promise<Record<string, unknown>> {
    const id = this.#next++;
    const { promise, resolve, reject } = Promise.withResolvers<Record<string, unknown>>();
    this.#pending.set(id, { resolve, reject });
    this.#socket.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return within(promise, 30_000, method);
  }

  /** Opens `url` in a new tab; returns the page's session. */
  async open(url: string): Promise<Page> {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    const page = new Page(this, sessionId as string);
    await this.send("Runtime.enable", {}, page.sessionId);
    await this.send("Log.enable", {}, page.sessionId);
    await this.send("Page.enable", {}, page.sessionId);
    await this.send("Page.navigate", { url }, page.sessionId);
    return page;
  }

  async close(): Promise<void> {
    try {
      this.#socket.close();
    } catch { /* closed */ }
    await this.#proc.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

/** One tab. */
export class Page {
  constructor(readonly browser: Browser, readonly sessionId: string) {}

  /** The value of a JavaScript expression in the page. */
  async evaluate<T = unknown>(expression: string): Promise<T> {
    const { result, exceptionDetails } = await this.browser.send("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    }, this.sessionId) as { result: { value: T }; exceptionDetails?: unknown };
    if (exceptionDetails) throw new Error(`page threw: ${JSON.stringify(exceptionDetails)}`);
    return result.value;
  }

  /** A PNG of the viewport. */
  async screenshot(): Promise<Uint8Array> {
    const { data } = await this.browser.send(
      "Page.captureScreenshot",
      { format: "png" },
      this.sessionId,
    );
    return Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0));
  }
}
