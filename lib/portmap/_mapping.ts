/**
 * What NAT-PMP and PCP mapping requests share: the ports and lifetime a
 * request may carry.
 *
 * @module
 */

/**
 * Checks a mapping request's ports (0–65535) and lifetime (seconds, 32 bits).
 *
 * @throws {RangeError} naming `what` and the field out of range
 */
export function checkMapping(
  what: string,
  internalPort: number,
  externalPort: number,
  lifetime: number,
): void {
  for (
    const [name, value, max] of [
      ["internal port", internalPort, 65535],
      ["external port", externalPort, 65535],
      ["lifetime", lifetime, 0xffffffff],
    ] as const
  ) {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`Cannot encode ${what}: ${name} ${value} is out of range`);
    }
  }
}
