let n = 0;
const on = (() => {
  try {
    return !!Deno.env.get("FB_TRACE");
  } catch {
    return false;
  }
})();
export const T = (s: string): void => {
  if (on && n++ < 400 && !s.startsWith("tx direct")) {
    console.error(
      `FB ${(performance.timeOrigin + performance.now()).toFixed(2)} ${s} @${
        performance.now().toFixed(1)
      }`,
    );
  }
};
