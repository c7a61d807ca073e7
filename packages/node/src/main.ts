/**
 * The kv-node process: parse the configuration, start the node, stop it cleanly on SIGTERM
 * or SIGINT (a second signal exits at once).
 */
import { ConfigError, helpText, parseConfig, unsafeOptionsOn } from './config.js'
import { KvNode } from './node.js'

export async function runNode(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  let parsed
  try {
    parsed = parseConfig(argv, env)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`kv-node: ${err.message}\n`)
      process.exitCode = 2
      return
    }
    throw err
  }
  if (parsed.help) {
    process.stdout.write(helpText())
    return
  }
  let node: KvNode
  try {
    node = await KvNode.start(parsed.config)
  } catch (err) {
    process.stderr.write(`kv-node: cannot start: ${(err as Error).message}\n`)
    process.exitCode = 1
    return
  }
  // Test-only switches that break a guarantee are never on quietly.
  for (const spec of unsafeOptionsOn(parsed.config)) {
    node.logger.warn({ option: spec.key, env: spec.env }, `${spec.flag} is on: ${spec.description}`)
  }
  let firstSignalAt = 0
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now()
    if (firstSignalAt !== 0) {
      // A wrapper (npm, pnpm) may forward the terminal's Ctrl-C a moment after the terminal
      // delivered it: repeats within a second are the same request.
      if (now - firstSignalAt < 1000) return
      node.logger.warn({ signal }, 'second signal; exiting without waiting')
      node.logger.flush()
      process.exit(1)
    }
    firstSignalAt = now
    node.stop(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        node.logger.error({ err }, 'error while stopping')
        node.logger.flush()
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', onSignal)
  // Certificates and the audit log file are read again, without a restart.
  process.on('SIGHUP', () => node.reload())
  process.on('SIGINT', onSignal)
  process.on('uncaughtException', (err) => {
    node.logger.fatal({ err }, 'uncaught exception')
    node.logger.flush()
    process.exit(1)
  })
}
