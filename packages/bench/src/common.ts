/** Helpers shared by the benchmark suites: output, wrk installation, metrics scraping. */
import { execFileSync, spawnSync } from 'node:child_process'
import { metric, metricValue, metricsText } from '@kvstore/testkit'
import { wrkAvailable } from './wrk.js'

export function say(text: string): void {
  process.stdout.write(`${text}\n`)
}

export const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

let aptUpdated = false

/**
 * Installs Debian `packages` with apt-get (its package lists refreshed once per run), within
 * 10 minutes; returns why it cannot (not root, no apt-get) instead of trying, or throws
 * when apt-get fails.
 */
export function aptInstall(packages: string[]): { unavailable: string } | null {
  if (process.getuid?.() !== 0) return { unavailable: 'not root' }
  if (spawnSync('apt-get', ['--version']).error !== undefined) return { unavailable: 'no apt-get' }
  say(`installing ${packages.join(', ')} from Debian packages (apt-get install)...`)
  const update = aptUpdated ? '' : 'apt-get update -qq && '
  execFileSync('sh', ['-c', `${update}apt-get install -y -qq ${packages.join(' ')} >/dev/null`], {
    stdio: 'inherit',
    timeout: 600_000,
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  })
  aptUpdated = true
  return null
}

export function ensureWrk(): void {
  if (wrkAvailable()) return
  const failed = aptInstall(['wrk'])
  if (failed === null && wrkAvailable()) return
  throw new Error(
    `the benchmark needs wrk${failed === null ? '' : `, and cannot install it here (${failed.unavailable})`}: install it (Debian/Ubuntu: sudo apt-get install wrk) and rerun`,
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

/**
 * Loads [0, total) in batches of `batch` (`load(start, end)` per batch), `workers` batches at a
 * time; fails on the first error, or with "loading <what> took over ..." past `timeoutMs`.
 */
export async function loadInBatches(
  options: { total: number; batch: number; workers: number; timeoutMs: number; what: string },
  load: (start: number, end: number) => Promise<void>,
): Promise<void> {
  const { total, batch, workers, timeoutMs, what } = options
  const deadline = performance.now() + timeoutMs
  let next = 0
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (next < total) {
        if (performance.now() > deadline) {
          throw new Error(`loading ${what} took over ${timeoutMs / 1000} s`)
        }
        const start = next
        next = Math.min(total, next + batch)
        await load(start, next)
      }
    }),
  )
}
