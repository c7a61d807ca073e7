/**
 * Drives wrk (a C load generator: one thread and 64 connections cost far less CPU than a
 * JavaScript client) and reads its results from a Lua `done` hook as JSON.
 */
import { spawn, spawnSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { cpuSeconds, track } from './proc.js'

export interface WrkResult {
  requests: number
  durationS: number
  throughput: number
  /** Responses that were not 2xx, and socket errors. */
  errors: number
  latencyMs: { p50: number; p99: number; p999: number; max: number }
  /** CPU used by wrk, in cores (1 = one core busy). */
  loadGeneratorCores: number
}

/** The `done` hook every script ends with: wrk's summary as one `WRKJSON {...}` line. */
export const doneHook = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON " .. string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50":%d,"p99":%d,"p999":%d,"max":%d}',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max) .. "\\n")
end
`

/**
 * Lua script: PUT a fresh key with a value of `valueBytes` on every request. `query` is
 * appended to each URL (such as `?ack=quorum`); `delayMs` makes each connection pause that long
 * before each request, which caps the rate near connections * 1000 / (delayMs + latency).
 */
/** Lua table entries for the request headers: the Authorization header, when there is one. */
function authHeaders(authorization: string | undefined): string {
  return authorization === undefined ? '' : `["Authorization"] = "${authorization}",`
}

export function putScript(
  prefix: string,
  valueBytes: number,
  options: { query?: string; delayMs?: number; authorization?: string | undefined } = {},
): string {
  const delay =
    options.delayMs === undefined
      ? ''
      : `delay = function() return ${Math.max(0, Math.round(options.delayMs))} end`
  return `
local counter = 0
local body = string.rep("v", ${valueBytes})
local headers = { ["Content-Type"] = "application/octet-stream", ${authHeaders(options.authorization)} }
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/${prefix}" .. counter .. "${options.query ?? ''}", headers, body)
end
${delay}
${doneHook}`
}

/**
 * Lua script: like `putScript`, but only keys whose hash slot is in `slots` (inclusive ranges):
 * it counts on from the last key until one falls in them. The slot is computed as the nodes do
 * (CRC16-XMODEM of the key's bytes, modulo 4,096; packages/protocol/src/shards.ts), so each
 * wrk sends only keys its group owns, spread uniformly over its slots. `prefix` may not hold a
 * hash tag (`{`), which this script does not look for.
 */
export function slotPutScript(
  prefix: string,
  valueBytes: number,
  slots: readonly (readonly [first: number, last: number])[],
  options: { query?: string; authorization?: string | undefined } = {},
): string {
  if (prefix.includes('{')) throw new Error(`slotPutScript: the prefix ${prefix} holds a {`)
  if (slots.length === 0) throw new Error('slotPutScript: no slots')
  const ranges = slots.map(([first, last]) => `{${first}, ${last}}`).join(', ')
  return `
local bit = require("bit")
local band, bxor, lshift, rshift = bit.band, bit.bxor, bit.lshift, bit.rshift
local crcTable = {}
for i = 0, 255 do
  local crc = lshift(i, 8)
  for _ = 1, 8 do
    if band(crc, 0x8000) ~= 0 then crc = band(bxor(lshift(crc, 1), 0x1021), 0xffff)
    else crc = band(lshift(crc, 1), 0xffff) end
  end
  crcTable[i] = crc
end
local function slotOf(key)
  local crc = 0
  for i = 1, #key do
    crc = bxor(band(lshift(crc, 8), 0xffff), crcTable[band(bxor(rshift(crc, 8), key:byte(i)), 0xff)])
  end
  return crc % 4096
end
local owned = {}
for _, range in ipairs({ ${ranges} }) do
  for slot = range[1], range[2] do owned[slot] = true end
end
local counter = 0
local body = string.rep("v", ${valueBytes})
local headers = { ["Content-Type"] = "application/octet-stream", ${authHeaders(options.authorization)} }
request = function()
  local key
  repeat
    counter = counter + 1
    key = "${prefix}" .. counter
  until owned[slotOf(key)]
  return wrk.format("PUT", "/v1/kv/" .. key .. "${options.query ?? ''}", headers, body)
end
${doneHook}`
}

/** Lua script: GET a random key among `keys` prefilled ones (`query` appended to each URL). */
export function getScript(
  prefix: string,
  keys: number,
  options: { authorization?: string | undefined; query?: string } = {},
): string {
  return `
math.randomseed(42)
local headers = { ${authHeaders(options.authorization)} }
request = function()
  return wrk.format("GET", "/v1/kv/${prefix}" .. math.random(0, ${keys - 1}) .. "${options.query ?? ''}", headers)
end
${doneHook}`
}

let scripts = 0

export function wrkAvailable(): boolean {
  return spawnSync('wrk', ['--version']).error === undefined
}

export async function runWrk(options: {
  url: string
  script: string
  scriptDir: string
  connections: number
  durationS: number
}): Promise<WrkResult> {
  const scriptPath = join(options.scriptDir, `wrk-${process.pid}-${++scripts}.lua`)
  await writeFile(scriptPath, options.script)
  const child = track(
    spawn(
      'wrk',
      [
        '-t1',
        `-c${options.connections}`,
        `-d${options.durationS}s`,
        '--timeout',
        '10s',
        '-s',
        scriptPath,
        options.url,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  )
  // Listen at once: a wrk that fails at start (a bad script, a refused connection) may exit
  // before the first await below returns. 'close', not 'exit': 'exit' can come before the last
  // of stdout is read, and the result line would be missed ("wrk failed (exit 0)", no output).
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve))
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()))
  // wrk's CPU is read just before it exits: sample it at the end of the run.
  let cores = 0
  const started = performance.now()
  const before = await cpuSeconds(child.pid as number)
  const sampler = setTimeout(
    () => {
      void cpuSeconds(child.pid as number).then((after) => {
        cores = (after - before) / ((performance.now() - started) / 1000)
      })
    },
    Math.max(0, options.durationS * 1000 - 200),
  )
  // wrk stops by itself after -d; should it hang, it is killed 30 s later.
  const watchdog = setTimeout(() => child.kill('SIGKILL'), options.durationS * 1000 + 30_000)
  const code = await exited
  clearTimeout(sampler)
  clearTimeout(watchdog)
  const line = out.split('\n').find((l) => l.startsWith('WRKJSON '))
  if (code !== 0 || line === undefined) throw new Error(`wrk failed (exit ${code}):\n${out}`)
  const raw = JSON.parse(line.slice('WRKJSON '.length)) as Record<string, number>
  const durationS = (raw.duration_us ?? 0) / 1e6
  const requests = raw.requests ?? 0
  return {
    requests,
    durationS,
    throughput: requests / durationS,
    errors: (raw.status_errors ?? 0) + (raw.socket_errors ?? 0),
    latencyMs: {
      p50: (raw.p50 ?? 0) / 1000,
      p99: (raw.p99 ?? 0) / 1000,
      p999: (raw.p999 ?? 0) / 1000,
      max: (raw.max ?? 0) / 1000,
    },
    loadGeneratorCores: cores,
  }
}

/** Three seconds of closed-loop `ack=quorum` PUTs under `warm/`, their results discarded. */
export async function warmUpQuorumPuts(options: {
  url: string
  valueBytes: number
  authorization: string | undefined
  scriptDir: string
  connections: number
}): Promise<void> {
  await runWrk({
    url: options.url,
    script: putScript('warm/', options.valueBytes, {
      query: '?ack=quorum',
      authorization: options.authorization,
    }),
    scriptDir: options.scriptDir,
    connections: options.connections,
    durationS: 3,
  })
}

/**
 * The closed-loop maximum of quorum PUTs to `url`: wrk with `connections` connections for
 * `durationS`, fresh keys under bench/max/. `maximum` counts the writes that succeeded, per
 * second.
 */
export async function quorumPutMaximum(options: {
  url: string
  valueBytes: number
  authorization: string | undefined
  scriptDir: string
  connections: number
  durationS: number
}): Promise<{ result: WrkResult; maximum: number }> {
  const result = await runWrk({
    url: options.url,
    script: putScript('bench/max/', options.valueBytes, {
      query: '?ack=quorum',
      authorization: options.authorization,
    }),
    scriptDir: options.scriptDir,
    connections: options.connections,
    durationS: options.durationS,
  })
  return { result, maximum: Math.max(0, result.requests - result.errors) / result.durationS }
}
