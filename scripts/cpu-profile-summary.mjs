#!/usr/bin/env node
// Summarises V8 .cpuprofile files (from scripts/cpu-profile.cjs, or Chrome DevTools): self time
// by category (Node's HTTP, TLS, streams, native calls such as the socket writev, each npm
// package, each of our packages, GC, idle) and the functions with the most self time.
//
//   node scripts/cpu-profile-summary.mjs [--top 25] [--by-category-only] <file.cpuprofile>...
//
// Shares are of busy time (every sample but "(idle)"); several files are added together.
//
// Caution: V8's sampler charges a sample taken while the main thread runs native code outside
// JS (libuv, the kernel's read and write, llhttp, TLS) to the last native function JS called,
// which in an HTTP server is the socket writev. A bare fastify handler shows the same ~60%
// "writev" as a node does; use `perf` (docs/benchmarks.md, "How to profile") to see what that
// time really is.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const say = (line) => process.stdout.write(`${line}\n`)

const { values: opts, positionals: files } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string', default: '25' },
    'by-category-only': { type: 'boolean', default: false },
  },
})
if (files.length === 0) {
  process.stderr.write('usage: cpu-profile-summary.mjs [--top N] <file.cpuprofile>...\n')
  process.exit(2)
}

const socketWrites = new Set(['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String'])

/** The category of a profile node's own time. */
function categoryOf(callFrame) {
  const { functionName: name, url } = callFrame
  if (url === '') {
    if (name === '(idle)' || name === '(program)' || name === '(garbage collector)') return name
    if (name === '(root)') return '(program)'
    if (socketWrites.has(name)) return 'native: writev & co (see the note below)'
    return 'native: other C++ bindings'
  }
  const nodeModule = /\/node_modules\/(?:\.pnpm\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)/.exec(
    url,
  )
  if (nodeModule !== null) return `npm: ${nodeModule[1]}`
  const ours = /\/packages\/([^/]+)\//.exec(url)
  if (ours !== null) return `ours: @kvstore/${ours[1]}`
  if (url.startsWith('node:')) {
    const module = url.slice('node:'.length)
    if (/^(_http_|http$|internal\/http)/.test(module)) return 'node: http'
    if (/^(_tls_|tls$|internal\/tls)/.test(module)) return 'node: tls'
    if (/^(internal\/)?http2/.test(module)) return 'node: http2'
    if (/^(internal\/)?streams?\b|^_stream_/.test(module)) return 'node: streams'
    if (/^net$|internal\/stream_base_commons|internal\/net/.test(module)) return 'node: net'
    if (/^(events|internal\/event_target)/.test(module)) return 'node: events'
    if (/^internal\/(process\/task_queues|timers)|^timers/.test(module))
      return 'node: ticks and timers'
    return 'node: other'
  }
  return 'other'
}

const byCategory = new Map()
const byFunction = new Map()
let totalUs = 0
let idleUs = 0
for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8'))
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]))
  const { samples, timeDeltas } = profile
  for (let i = 0; i < samples.length; i++) {
    // A sample stands for the time until the next one.
    const us = Math.max(0, timeDeltas[i + 1] ?? timeDeltas[i] ?? 0)
    const node = nodes.get(samples[i])
    if (node === undefined) continue
    totalUs += us
    const frame = node.callFrame
    if (frame.functionName === '(idle)') {
      idleUs += us
      continue
    }
    const category = categoryOf(frame)
    byCategory.set(category, (byCategory.get(category) ?? 0) + us)
    const where =
      frame.url === ''
        ? ''
        : ` ${frame.url.replace(/^.*\/(node_modules|packages)\//, '$1/')}:${frame.lineNumber + 1}`
    const key = `${frame.functionName || '(anonymous)'}${where}`
    byFunction.set(key, (byFunction.get(key) ?? 0) + us)
  }
}

const busyUs = totalUs - idleUs
const pct = (us) => `${((100 * us) / busyUs).toFixed(1).padStart(5)}%`
const ms = (us) => `${(us / 1000).toFixed(0).padStart(7)} ms`
say(
  `${files.length} profile(s): ${ms(totalUs).trim()} sampled, ${ms(busyUs).trim()} busy (${((100 * busyUs) / totalUs).toFixed(0)}%), shares of busy time\n`,
)
say('by category:')
for (const [name, us] of [...byCategory].sort((a, b) => b[1] - a[1])) {
  say(`  ${pct(us)} ${ms(us)}  ${name}`)
}
if (byCategory.has('native: writev & co (see the note below)')) {
  say(
    '\nnote: "writev & co" also holds samples taken outside JS (libuv, kernel read/write, llhttp, TLS): V8 charges them to the last native call. See perf for the real split.',
  )
}
if (!opts['by-category-only']) {
  say(`\ntop ${opts.top} functions by self time:`)
  for (const [name, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, Number(opts.top))) {
    say(`  ${pct(us)} ${ms(us)}  ${name}`)
  }
}
