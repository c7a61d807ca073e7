/**
 * An open-loop load generator: sends PUTs on a fixed schedule (`rate` per second) over a pool of
 * keep-alive HTTP/1.1 connections, whatever the server's latency. wrk is closed-loop (each
 * connection waits for its answer), so it cannot hold a rate below the maximum; this can.
 * Latency is measured from when a request was due, not when it was sent, so a stalled server
 * shows up in the percentiles instead of hiding in a lower send rate (coordinated omission).
 * Latencies go into HDR histograms (latency.ts): one for the run, one per second of the
 * schedule (summarized as soon as that second has nothing outstanding), and stall episodes.
 *
 * It speaks just enough HTTP/1.1 for the node's answers: a status line, headers and a
 * Content-Length body.
 */
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { Latencies, Stalls, Timeline, type SecondStats, type StallEpisode } from './latency.js'

export interface PacedOptions {
  url: string
  rate: number
  durationS: number
  connections: number
  valueBytes: number
  prefix: string
  query?: string
  /** For https URLs: the CA (and a client certificate). */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined
  /** Sent as the Authorization header of every request. */
  authorization?: string | undefined
  /** A request slower than this (from when it was due) is part of a stall; default 100 ms. */
  stallThresholdMs?: number
  /** Ends the schedule early once it returns true (checked every millisecond or so). */
  stopWhen?: () => boolean
}

export interface PacedResult {
  /** Requests due by the schedule. */
  scheduled: number
  /** Requests answered with 2xx. */
  completed: number
  /** Non-2xx answers and requests never sent because every connection stayed busy. */
  errors: number
  throughput: number
  latencyMs: { p50: number; p99: number; p999: number; max: number }
  /** Each second of the schedule: the requests due in it that completed, p50, p99, max. */
  perSecond: SecondStats[]
  /** Stretches where requests took over `thresholdMs` from when they were due (latency.ts). */
  stalls: { thresholdMs: number; count: number; longestMs: number; episodes: StallEpisode[] }
  /** CPU used by this generator, in cores. */
  loadGeneratorCores: number
}

interface Conn {
  socket: Socket
  buffer: Buffer
  dueAt: number
  busy: boolean
  /** The server closed it, or said it would (`Connection: close`): never used again. */
  retired: boolean
}

const headerEnd = Buffer.from('\r\n\r\n')
const lengthHeaders = [Buffer.from('\r\ncontent-length:'), Buffer.from('\r\nContent-Length:')]
const closeHeaders = [Buffer.from('\r\nconnection: close'), Buffer.from('\r\nConnection: close')]

/** Whether the header block `buffer[0, end)` says the server closes the connection after it. */
function closesAfter(buffer: Buffer, end: number): boolean {
  for (const name of closeHeaders) {
    const at = buffer.indexOf(name)
    if (at >= 0 && at < end) return true
  }
  return false
}
const empty = Buffer.alloc(0)

/** The Content-Length in the header block `buffer[0, end)`, or -1. */
function contentLength(buffer: Buffer, end: number): number {
  for (const name of lengthHeaders) {
    const at = buffer.indexOf(name)
    if (at < 0 || at >= end) continue
    let i = at + name.length
    while (buffer[i] === 0x20) i++
    let value = 0
    let digits = 0
    for (let c = buffer[i] ?? 0; c >= 0x30 && c <= 0x39; c = buffer[++i] ?? 0) {
      value = value * 10 + c - 0x30
      digits++
    }
    return digits > 0 ? value : -1
  }
  return -1
}

export async function runPaced(options: PacedOptions): Promise<PacedResult> {
  const target = new URL(options.url)
  const intervalMs = 1000 / options.rate
  const backlogMax = Math.max(options.connections, Math.ceil(options.rate)) // one second of work
  const latencies = new Latencies()
  const timeline = new Timeline()
  const stalls = new Stalls(options.stallThresholdMs ?? 100)
  let scheduled = 0
  let completed = 0
  let errors = 0
  let sent = 0
  const backlog: number[] = []

  // One latin1 string per request: the path prefix, the counter, then the fixed rest.
  const head = `PUT /v1/kv/${options.prefix}`
  const auth =
    options.authorization === undefined ? '' : `Authorization: ${options.authorization}\r\n`
  const tail = `${options.query ?? ''} HTTP/1.1\r\nHost: ${target.host}\r\n${auth}Content-Type: application/octet-stream\r\nContent-Length: ${options.valueBytes}\r\n\r\n${'v'.repeat(options.valueBytes)}`
  const secure = target.protocol === 'https:'

  const conns: Conn[] = await Promise.all(
    Array.from(
      { length: options.connections },
      () =>
        new Promise<Conn>((resolve, reject) => {
          const socket: Socket = secure
            ? tlsConnect({
                host: target.hostname,
                port: Number(target.port),
                ...options.tls,
                ALPNProtocols: ['http/1.1'],
              })
            : connect({ host: target.hostname, port: Number(target.port) })
          socket.setNoDelay(true)
          socket.once('error', reject)
          socket.once(secure ? 'secureConnect' : 'connect', () => {
            socket.off('error', reject)
            resolve({ socket, buffer: Buffer.alloc(0), dueAt: 0, busy: false, retired: false })
          })
        }),
    ),
  )
  const idle: Conn[] = [...conns]
  let failure = null as Error | null
  /** Set once the run is over and this side closes the connections. */
  let finished = false

  const send = (conn: Conn, dueAt: number) => {
    conn.busy = true
    conn.dueAt = dueAt
    conn.socket.write(head + String(sent++) + tail, 'latin1')
  }
  // The least recently used connection goes first, so that every connection carries requests
  // even at a low rate: a server closes one that sends nothing for a while (Node's HTTP server
  // answers 408 and closes once headersTimeout passes with no request on a new connection).
  const pump = () => {
    while (backlog.length > 0 && idle.length > 0)
      send(idle.shift() as Conn, backlog.shift() as number)
  }
  const retire = (conn: Conn) => {
    if (conn.retired) return
    conn.retired = true
    const at = idle.indexOf(conn)
    if (at >= 0) idle.splice(at, 1)
    if (!finished && conns.every((c) => c.retired))
      failure ??= new Error('the server closed every connection')
  }

  for (const conn of conns) {
    conn.socket.on('error', (err) => (failure ??= err))
    conn.socket.on('close', () => {
      if (conn.busy) failure ??= new Error('the server closed a connection mid-request')
      retire(conn)
    })
    conn.socket.on('data', (chunk: Buffer) => {
      if (!conn.busy) {
        // An answer to no request of ours (a 408 for a connection left unused too long): not
        // a request's outcome, and the connection is done for.
        conn.buffer = empty
        retire(conn)
        return
      }
      conn.buffer = conn.buffer.length === 0 ? chunk : Buffer.concat([conn.buffer, chunk])
      for (;;) {
        const buffer = conn.buffer
        const end = buffer.indexOf(headerEnd)
        if (end < 0) return
        const length = contentLength(buffer, end)
        if (length < 0) {
          failure ??= new Error(
            `an answer without Content-Length: ${buffer.subarray(0, Math.min(end, 80)).toString('latin1')}`,
          )
          conn.socket.destroy()
          return
        }
        const total = end + headerEnd.length + length
        if (buffer.length < total) return
        // "HTTP/1.1 200 ...": the status code is bytes 9 to 11.
        const status = (buffer[9] ?? 0) * 100 + (buffer[10] ?? 0) * 10 + (buffer[11] ?? 0) - 5328
        conn.buffer = buffer.length === total ? empty : buffer.subarray(total)
        const closing = closesAfter(buffer, end)
        if (status >= 200 && status < 300) {
          completed++
          const latency = performance.now() - conn.dueAt
          latencies.record(latency)
          timeline.record(conn.dueAt - started, latency)
          stalls.record(conn.dueAt - started, latency)
        } else {
          errors++
        }
        conn.busy = false
        if (closing) retire(conn)
        else idle.push(conn)
        pump()
      }
    })
  }

  const cpuBefore = process.cpuUsage()
  const started = performance.now()
  // Seconds before the oldest request still waiting to be sent or answered are complete.
  let settledSecond = 0
  const settle = () => {
    let oldest = backlog[0] ?? Infinity
    for (const c of conns) if (c.busy) oldest = Math.min(oldest, c.dueAt)
    timeline.settle(Math.min(oldest, performance.now()) - started)
  }
  const endAt = started + options.durationS * 1000
  let scheduleEndAt = endAt
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now()
      const dueNow = Math.floor((Math.min(now, endAt) - started) / intervalMs)
      while (scheduled < dueNow) {
        const dueAt = started + scheduled * intervalMs
        scheduled++
        if (backlog.length >= backlogMax) {
          errors++ // the server is more than a second behind: this request is lost
        } else {
          backlog.push(dueAt)
        }
      }
      pump()
      const second = Math.floor((now - started) / 1000)
      if (second !== settledSecond) {
        settledSecond = second
        settle()
      }
      if (now >= endAt || failure || options.stopWhen?.() === true) {
        scheduleEndAt = Math.min(now, endAt)
        resolve()
      } else setTimeout(tick, 1)
    }
    tick()
  })
  // Send what is still due and let it finish (up to 10 s); what does not counts as errors.
  const drainBy = performance.now() + 10_000
  while (
    (backlog.length > 0 || conns.some((c) => c.busy)) &&
    performance.now() < drainBy &&
    !failure
  ) {
    pump()
    await new Promise((r) => setTimeout(r, 5))
  }
  errors += backlog.splice(0).length
  const wallS = (performance.now() - started) / 1000
  const cpu = process.cpuUsage(cpuBefore)
  errors += conns.filter((c) => c.busy).length
  finished = true
  for (const conn of conns) conn.socket.destroy()
  if (failure) throw failure
  // The schedule's length: `durationS`, or less when `stopWhen` ended it.
  const scheduleS = Math.max(0.001, (scheduleEndAt - started) / 1000)
  return {
    scheduled,
    completed,
    errors,
    throughput: completed / scheduleS,
    latencyMs: latencies.summary(),
    perSecond: timeline.finish(Math.ceil(scheduleS)),
    stalls: stalls.summary(),
    loadGeneratorCores: (cpu.user + cpu.system) / 1e6 / wallS,
  }
}
