// A CPU profile of every kv-node process, for finding where the time goes. Preload it with
// --import in NODE_OPTIONS and name a directory:
//
//   KV_CPU_PROFILE_DIR=/tmp/prof NODE_OPTIONS="--import $PWD/scripts/cpu-profile.mjs" <command>
//
// <command> is anything that starts nodes: `pnpm bench ...`, `node scripts/follower-read-probe.mjs`,
// `pnpm kv-node ...`. Each node process (argv[1] ends in kv-node.js; other Node processes, such
// as pnpm, the bench or vitest, are left alone; KV_CPU_PROFILE_MATCH=<regex on argv[1]> picks
// others, such as hello-server for the compare suite's bare fastify handler) starts V8's sampling
// profiler and writes <dir>/<member id>-<pid>.cpuprofile when it exits (SIGTERM and a clean
// stop; not kill -9). Open the file in Chrome DevTools (Performance panel), or summarise it with
// `node scripts/cpu-profile-summary.mjs <files>`.
//
// KV_CPU_PROFILE_INTERVAL_US sets the sampling interval (default 200 µs). Profiling costs a few
// percent of CPU: compare figures only with figures taken the same way. Read docs/benchmarks.md
// ("How to profile") before trusting the share of a native function such as `writev`.
import { Session } from 'node:inspector'
import { mkdirSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'

const dir = process.env.KV_CPU_PROFILE_DIR
const script = process.argv[1] ?? ''
const match = new RegExp(process.env.KV_CPU_PROFILE_MATCH || 'kv-node(\\.js)?$')
if (dir !== undefined && dir !== '' && match.test(script)) {
  const intervalUs = Number(process.env.KV_CPU_PROFILE_INTERVAL_US || 200)
  const session = new Session()
  session.connect()
  session.post('Profiler.enable')
  session.post('Profiler.setSamplingInterval', { interval: intervalUs })
  session.post('Profiler.start')
  const id = /--id[= ](\S+)/.exec(process.argv.join(' '))?.[1] ?? basename(script, '.js')
  process.once('exit', () => {
    // The in-process inspector session answers synchronously, so this runs before exit.
    session.post('Profiler.stop', (err, result) => {
      if (err) {
        process.stderr.write(`cpu-profile: ${err.message}\n`)
        return
      }
      mkdirSync(dir, { recursive: true })
      const file = join(dir, `${id}-${process.pid}.cpuprofile`)
      writeFileSync(file, JSON.stringify(result.profile))
      process.stderr.write(`cpu-profile: wrote ${file}\n`)
    })
  })
}
