/**
 * etcd for the compare suite: Debian's `etcd-server` package (etcd 3.4), three members on
 * 127.0.0.1, each with its own client and peer ports and a data directory in the run's
 * temporary directory, as shipped (fsync on, default snapshot and heartbeat settings, plain
 * HTTP, no auth). The load goes through etcd's JSON gateway (grpc-gateway on the client port):
 * `POST /v3/kv/put` and `POST /v3/kv/range`, with base64 keys and values.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { openSync, closeSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fetchJson, freePort } from '@kvstore/testkit'
import { Pool } from 'undici'
import { aptInstall, loadInBatches, say, sleep } from './common.js'
import { hasExited, stopChild, track } from './proc.js'
import { doneHook } from './wrk.js'

/** Where Debian's etcd-server puts the server. */
const debianBin = '/usr/bin/etcd'

export interface EtcdBinary {
  path: string
  version: string
}

function etcdVersion(path: string): string | null {
  const run = spawnSync(path, ['--version'], { encoding: 'utf8', timeout: 10_000 })
  if (run.error !== undefined || run.status !== 0) return null
  return /etcd Version: (\S+)/.exec(run.stdout)?.[1] ?? 'unknown'
}

/**
 * Finds etcd (/usr/bin/etcd, or `etcd` on PATH), or installs Debian's etcd-server with apt-get
 * when this runs as root; otherwise fails saying what to do.
 */
export function ensureEtcd(): EtcdBinary {
  for (const path of [debianBin, 'etcd']) {
    const version = etcdVersion(path)
    if (version !== null) return { path, version }
  }
  say('etcd is not installed.')
  let failed: { unavailable: string } | null
  try {
    failed = aptInstall(['etcd-server'])
  } catch (err) {
    throw new Error(`apt-get install etcd-server failed: ${(err as Error).message}`)
  }
  if (failed !== null) {
    throw new Error(
      `the compare suite needs etcd, and cannot install it here (${failed.unavailable}): install etcd-server (Debian: sudo apt-get install etcd-server) and rerun`,
    )
  }
  const version = etcdVersion(debianBin)
  if (version === null)
    throw new Error(`apt-get installed etcd-server, but ${debianBin} does not run`)
  return { path: debianBin, version }
}

export interface EtcdMember {
  name: string
  /** Client URL (the JSON gateway and gRPC). */
  url: string
  peerUrl: string
  dataDir: string
  logFile: string
  child: ChildProcess
  pid: number
  /** etcd's member id, as its status answers report it. */
  id: string
}

export interface EtcdCluster {
  members: EtcdMember[]
  leader: EtcdMember
  followers: EtcdMember[]
  /** SIGTERM every member, SIGKILL what is left after 5 s; resolves once all are gone. */
  stop(): Promise<void>
}

interface StatusAnswer {
  header?: { member_id?: string }
  leader?: string
}

/** A POST of `body` as JSON answered with JSON, or null (see testkit's fetchJson). */
const postJson = <T>(url: string, body: unknown, timeoutMs = 2000): Promise<T | null> =>
  fetchJson<T>(url, { body, timeoutMs })

const tail = (path: string): string => {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-8).join('\n')
  } catch {
    return '(no log)'
  }
}

/**
 * Starts an `n`-member etcd cluster under `dir` and resolves once every member answers and
 * names the same leader (within `timeoutMs`); on failure every member is stopped.
 */
export async function startEtcdCluster(
  bin: EtcdBinary,
  dir: string,
  n = 3,
  timeoutMs = 30_000,
): Promise<EtcdCluster> {
  const layout: { name: string; url: string; peerUrl: string }[] = []
  for (let i = 1; i <= n; i++) {
    layout.push({
      name: `e${i}`,
      url: `http://127.0.0.1:${await freePort()}`,
      peerUrl: `http://127.0.0.1:${await freePort()}`,
    })
  }
  const initialCluster = layout.map((m) => `${m.name}=${m.peerUrl}`).join(',')
  // One token for every member: it seeds the cluster id they must agree on.
  const token = `kv-bench-${process.pid}-${Date.now()}`
  const members: EtcdMember[] = []
  const stop = async () => {
    await Promise.all(members.map((m) => stopChild(m.child)))
  }
  try {
    for (const m of layout) {
      const dataDir = join(dir, m.name)
      const logFile = join(dir, `${m.name}.log`)
      const fd = openSync(logFile, 'a')
      const child = track(
        spawn(
          bin.path,
          [
            '--name',
            m.name,
            '--data-dir',
            dataDir,
            '--listen-client-urls',
            m.url,
            '--advertise-client-urls',
            m.url,
            '--listen-peer-urls',
            m.peerUrl,
            '--initial-advertise-peer-urls',
            m.peerUrl,
            '--initial-cluster',
            initialCluster,
            '--initial-cluster-state',
            'new',
            '--initial-cluster-token',
            token,
            '--logger',
            'zap',
            '--log-level',
            'warn',
            '--log-outputs',
            'stderr',
          ],
          { stdio: ['ignore', fd, fd] },
        ),
      )
      closeSync(fd)
      members.push({ ...m, dataDir, logFile, child, pid: child.pid as number, id: '' })
    }
    const deadline = performance.now() + timeoutMs
    for (;;) {
      const dead = members.find((m) => hasExited(m.child))
      if (dead !== undefined) {
        throw new Error(`etcd member ${dead.name} exited while starting:\n${tail(dead.logFile)}`)
      }
      const statuses = await Promise.all(
        members.map((m) => postJson<StatusAnswer>(`${m.url}/v3/maintenance/status`, {})),
      )
      const leaders = new Set(statuses.map((s) => s?.leader ?? '0'))
      if (statuses.every((s) => s?.header?.member_id !== undefined) && leaders.size === 1) {
        const leaderId = [...leaders][0] as string
        if (leaderId !== '0') {
          statuses.forEach((s, i) => ((members[i] as EtcdMember).id = s?.header?.member_id ?? ''))
          const leader = members.find((m) => m.id === leaderId)
          if (leader !== undefined) {
            return {
              members,
              leader,
              followers: members.filter((m) => m !== leader),
              stop,
            }
          }
        }
      }
      if (performance.now() > deadline) {
        throw new Error(
          `etcd did not elect a leader within ${timeoutMs / 1000} s:\n${members.map((m) => `${m.name}:\n${tail(m.logFile)}`).join('\n')}`,
        )
      }
      await sleep(100)
    }
  } catch (err) {
    await stop()
    throw err
  }
}

export const base64 = (text: string | Buffer): string =>
  (typeof text === 'string' ? Buffer.from(text) : text).toString('base64')

/**
 * Lua: a base64 encoder (the gateway takes keys and values in base64), checked against
 * Node's encoder when wrk loads the script, so a wrong key can never go unnoticed as a range
 * that finds nothing (etcd answers 200 either way).
 */
function base64Lua(): string {
  const probes = ['a', 'ab', 'abc', 'bench/etcd/get/12345', 'x/9']
  return `
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local sixbits = {}
for i = 1, 64 do sixbits[i - 1] = alphabet:sub(i, i) end
local floor = math.floor
local concat = table.concat
local function b64(s)
  local out = {}
  local n = #s
  for i = 1, n, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = sixbits[floor(v / 262144) % 64]
    out[#out + 1] = sixbits[floor(v / 4096) % 64]
    out[#out + 1] = b and sixbits[floor(v / 64) % 64] or "="
    out[#out + 1] = c and sixbits[v % 64] or "="
  end
  return concat(out)
end
${probes.map((p) => `assert(b64("${p}") == "${base64(p)}", "base64 of ${p}")`).join('\n')}
`
}

/** Lua script: etcd put of a fresh key (`prefix` and a counter) with a `valueBytes` value. */
export function etcdPutScript(prefix: string, valueBytes: number): string {
  const value = base64(Buffer.alloc(valueBytes, 'v'))
  return `${base64Lua()}
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v3/kv/put", headers,
    '{"key":"' .. b64("${prefix}" .. counter) .. '","value":"${value}"}')
end
${doneHook}`
}

/**
 * Lua script: etcd range of one random key among `keys` prefilled ones (`prefix` and 0 ..
 * keys-1); linearizable (etcd's default: the member confirms with the leader through a
 * ReadIndex round) or serializable (served from the member's own state).
 */
export function etcdRangeScript(prefix: string, keys: number, serializable: boolean): string {
  return `${base64Lua()}
math.randomseed(42)
local headers = { ["Content-Type"] = "application/json" }
request = function()
  return wrk.format("POST", "/v3/kv/range", headers,
    '{"key":"' .. b64("${prefix}" .. math.random(0, ${keys - 1})) .. '"${serializable ? ',"serializable":true' : ''}}')
end
${doneHook}`
}

/**
 * Puts keys `prefix`0 .. `prefix`(keys-1) with `valueBytes` values, 128 to a transaction (etcd's
 * default --max-txn-ops), a few transactions at a time; fails past `timeoutMs`.
 */
export async function etcdPrefill(
  url: string,
  prefix: string,
  valueBytes: number,
  keys: number,
  timeoutMs = 300_000,
): Promise<void> {
  const value = base64(Buffer.alloc(valueBytes, 'v'))
  const pool = new Pool(url, { connections: 4, headersTimeout: 30_000, bodyTimeout: 30_000 })
  try {
    await loadInBatches(
      { total: keys, batch: 128, workers: 4, timeoutMs, what: `${keys} keys into etcd` },
      async (start, end) => {
        const success = []
        for (let i = start; i < end; i++) {
          success.push({ request_put: { key: base64(`${prefix}${i}`), value } })
        }
        const res = await pool.request({
          method: 'POST',
          path: '/v3/kv/txn',
          body: JSON.stringify({ success }),
          headers: { 'content-type': 'application/json' },
        })
        const text = await res.body.text()
        if (res.statusCode !== 200) {
          throw new Error(`etcd txn answered ${res.statusCode}: ${text.slice(0, 200)}`)
        }
      },
    )
  } finally {
    await pool.close()
  }
}

/** How many keys start with `prefix` (a linearizable count on `url`); null when it fails. */
export async function etcdCount(url: string, prefix: string): Promise<number | null> {
  const start = Buffer.from(prefix)
  const end = Buffer.from(start)
  end[end.length - 1] = (end[end.length - 1] as number) + 1
  const answer = await postJson<{ count?: string }>(`${url}/v3/kv/range`, {
    key: start.toString('base64'),
    range_end: end.toString('base64'),
    count_only: true,
  })
  return answer === null ? null : Number(answer.count ?? 0)
}

/** The value of `key` at `url` (base64 in, text out), or null when etcd has no such key. */
export async function etcdGet(
  url: string,
  key: string,
  serializable = false,
): Promise<string | null> {
  const answer = await postJson<{ kvs?: { value?: string }[] }>(`${url}/v3/kv/range`, {
    key: base64(key),
    ...(serializable ? { serializable: true } : {}),
  })
  const value = answer?.kvs?.[0]?.value
  return value === undefined ? null : Buffer.from(value, 'base64').toString()
}
