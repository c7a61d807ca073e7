/** Ordering of region stamps (pure, no I/O: the core imports it). */
import type { Stamp } from './codec.js'

export type { Stamp }

/** Negative, zero or positive as a is before, the same as, or after b. */
export function compareStamps(a: Stamp, b: Stamp): number {
  if (a.wallMs !== b.wallMs) return a.wallMs - b.wallMs
  if (a.logical !== b.logical) return a.logical - b.logical
  return a.region < b.region ? -1 : a.region > b.region ? 1 : 0
}

export function sameStamp(a: Stamp | null | undefined, b: Stamp | null | undefined): boolean {
  if (a === null || a === undefined || b === null || b === undefined)
    return (a === null || a === undefined) && (b === null || b === undefined)
  return a.wallMs === b.wallMs && a.logical === b.logical && a.region === b.region
}
