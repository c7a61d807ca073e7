#!/usr/bin/env node
/**
 * kv-router: parse the configuration, start the router, stop it cleanly on SIGTERM or SIGINT
 * (a second signal exits at once).
 */
import { RouterConfigError, parseRouterConfig, routerHelpText } from './config.js'
import { KvRouter } from './router.js'

async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  let parsed
  try {
    parsed = parseRouterConfig(argv, env)
  } catch (err) {
    if (err instanceof RouterConfigError) {
      process.stderr.write(`kv-router: ${err.message}\n`)
      process.exitCode = 2
      return
    }
    throw err
  }
  if (parsed.help) {
    process.stdout.write(routerHelpText())
    return
  }
  let router: KvRouter
  try {
    router = await KvRouter.start(parsed.config)
  } catch (err) {
    process.stderr.write(`kv-router: cannot start: ${(err as Error).message}\n`)
    process.exitCode = 1
    return
  }
  let firstSignalAt = 0
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now()
    if (firstSignalAt !== 0) {
      if (now - firstSignalAt < 1000) return
      router.logger.warn({ signal }, 'second signal; exiting without waiting')
      router.logger.flush()
      process.exit(1)
    }
    firstSignalAt = now
    router.stop(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        router.logger.error({ err }, 'error while stopping')
        router.logger.flush()
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  // The shard map file is read again: groups (and members) it adds are taken.
  process.on('SIGHUP', () => {
    void router.reload()
  })
  process.on('uncaughtException', (err) => {
    router.logger.fatal({ err }, 'uncaught exception')
    router.logger.flush()
    process.exit(1)
  })
}

await main(process.argv.slice(2), process.env)
