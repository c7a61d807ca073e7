/** Helpers shared by the benchmark suites: output, wrk installation, metrics scraping. */
import { execFileSync, spawnSync } from 'node:child_process'
import { metric, metricValue, metricsText } from '@kvstore/testkit'
import { wrkAvailable } from './wrk.js'

export function say(text: string): void {
  process.stdout.write(`${text}\n`)
}

export const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

export function ensureWrk(): void {
  if (wrkAvailable()) return
  const isRoot = process.getuid?.() === 0
  const hasApt = spawnSync('apt-get', ['--version']).error === undefined
  if (isRoot && hasApt) {
    say('wrk is missing; installing it from Debian packages (apt-get install wrk)...')
    execFileSync('sh', ['-c', 'apt-get update -qq && apt-get install -y -qq wrk >/dev/null'], {
      stdio: 'inherit',
    })
    if (wrkAvailable()) return
  }
  throw new Error(
    'the benchmark needs wrk: install it (Debian/Ubuntu: sudo apt-get install wrk) and rerun',
  )
}

/** A gauge's or counter's value in the node's /metrics (0 when absent). */
export const gauge = (url: string, name: string): Promise<number> => metric(url, name)

/** Sum and count of a histogram in the node's /metrics. */
export async function histogram(
  url: string,
  name: string,
): Promise<{ sum: number; count: number }> {
  const text = await metricsText(url)
  return { sum: metricValue(text, `${name}_sum`), count: metricValue(text, `${name}_count`) }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
