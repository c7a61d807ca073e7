/**
 * Reading the configuration: command-line flags, environment variables and the JSON config
 * file, each value parsed and bounded by its row in the option table.
 */
import { readFileSync } from 'node:fs'
import { configSpec } from './spec.js'
import { ConfigError, KiB, MiB, type NodeConfig, type OptionSpec } from './types.js'
import { configProblems } from './validate.js'

const sizeUnits: Record<string, number> = {
  '': 1,
  b: 1,
  k: KiB,
  kb: KiB,
  kib: KiB,
  m: MiB,
  mb: MiB,
  mib: MiB,
  g: 1024 * MiB,
  gb: 1024 * MiB,
  gib: 1024 * MiB,
}

function parseValue(spec: OptionSpec, raw: unknown, source: string): unknown {
  const where = `${spec.flag} (from ${source})`
  switch (spec.kind) {
    case 'string': {
      if (typeof raw !== 'string' || raw.length === 0) {
        throw new ConfigError(`${where} must be a non-empty string`)
      }
      return raw
    }
    case 'enum': {
      if (typeof raw !== 'string' || !spec.values?.includes(raw)) {
        throw new ConfigError(
          `${where} must be one of ${spec.values?.join(', ')}; got ${String(raw)}`,
        )
      }
      return raw
    }
    case 'boolean': {
      if (typeof raw === 'boolean') return raw
      const text = String(raw).toLowerCase()
      if (['true', '1', 'yes', 'on'].includes(text)) return true
      if (['false', '0', 'no', 'off'].includes(text)) return false
      throw new ConfigError(`${where} must be true or false; got ${String(raw)}`)
    }
    case 'integer':
    case 'bytes': {
      let value: number
      if (typeof raw === 'number') {
        value = raw
      } else {
        const match = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(String(raw))
        const unit = match?.[2]?.toLowerCase() ?? ''
        if (!match || (spec.kind === 'integer' && unit !== '') || !(unit in sizeUnits)) {
          const hint = spec.kind === 'bytes' ? ' (a number of bytes, or with KiB, MiB or GiB)' : ''
          throw new ConfigError(`${where} must be a whole number${hint}; got ${String(raw)}`)
        }
        value = Number(match[1]) * (sizeUnits[unit] ?? 1)
      }
      if (!Number.isSafeInteger(value)) throw new ConfigError(`${where} must be a whole number`)
      if (spec.min !== undefined && value < spec.min) {
        throw new ConfigError(`${where} must be at least ${spec.min}; got ${value}`)
      }
      if (spec.max !== undefined && value > spec.max) {
        throw new ConfigError(`${where} must be at most ${spec.max}; got ${value}`)
      }
      return value
    }
  }
}

export interface ParsedArgs {
  config: NodeConfig
  help: boolean
}

/**
 * Builds the configuration from command-line arguments (without the node and script paths)
 * and the environment. Throws `ConfigError` with a precise message on any bad input.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ParsedArgs {
  const byFlag = new Map(configSpec.map((spec) => [spec.flag, spec]))
  const flags = new Map<OptionSpec, string>()
  let configFile = env.KV_CONFIG
  let help = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--help' || arg === '-h') {
      help = true
      continue
    }
    const eq = arg.indexOf('=')
    const name = eq >= 0 ? arg.slice(0, eq) : arg
    let value = eq >= 0 ? arg.slice(eq + 1) : undefined
    if (name === '--config') {
      value ??= argv[++i]
      if (value === undefined) throw new ConfigError('--config needs a file path')
      configFile = value
      continue
    }
    const noPrefix = name.startsWith('--no-') ? byFlag.get(`--${name.slice(5)}`) : undefined
    if (noPrefix?.kind === 'boolean' && value === undefined) {
      flags.set(noPrefix, 'false')
      continue
    }
    const spec = byFlag.get(name)
    if (!spec) {
      const guess = [...byFlag.keys()].find((flag) => flag.includes(name.replace(/^-+/, '')))
      throw new ConfigError(
        `unknown option ${name}${guess ? ` (did you mean ${guess}?)` : ''}; see kv-node --help`,
      )
    }
    if (value === undefined) {
      const next = argv[i + 1]
      if (spec.kind === 'boolean' && (next === undefined || next.startsWith('--'))) {
        value = 'true'
      } else {
        value = argv[++i]
        if (value === undefined) throw new ConfigError(`${name} needs a value`)
      }
    }
    flags.set(spec, value)
  }

  let fileValues: Record<string, unknown> = {}
  if (configFile !== undefined) {
    let text: string
    try {
      text = readFileSync(configFile, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configFile}: ${(err as Error).message}`)
    }
    try {
      const parsed: unknown = JSON.parse(text)
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new Error('the top level must be an object')
      }
      fileValues = parsed as Record<string, unknown>
    } catch (err) {
      throw new ConfigError(
        `config file ${configFile} is not valid JSON: ${(err as Error).message}`,
      )
    }
    const known = new Set<string>(configSpec.map((spec) => spec.key))
    for (const key of Object.keys(fileValues)) {
      if (!known.has(key))
        throw new ConfigError(`config file ${configFile} has unknown option "${key}"`)
    }
  }

  const config: Partial<Record<keyof NodeConfig, unknown>> = {}
  const deferred: OptionSpec[] = []
  for (const spec of configSpec) {
    let raw: unknown
    let source: string
    if (flags.has(spec)) {
      raw = flags.get(spec)
      source = 'command line'
    } else if (env[spec.env] !== undefined && env[spec.env] !== '') {
      raw = env[spec.env]
      source = `environment ${spec.env}`
    } else if (Object.hasOwn(fileValues, spec.key)) {
      raw = fileValues[spec.key]
      source = `config file`
    } else {
      if (typeof spec.default === 'function') deferred.push(spec)
      else config[spec.key] = spec.default
      continue
    }
    config[spec.key] = parseValue(spec, raw, source)
  }
  for (const spec of deferred) {
    config[spec.key] = (spec.default as (c: Partial<NodeConfig>) => unknown)(
      config as Partial<NodeConfig>,
    )
  }
  const result = config as NodeConfig
  const problems = configProblems(result)
  if (problems.length > 0) {
    throw new ConfigError(
      `invalid configuration: ${problems.map((p) => p.message).join('; ')}`,
      problems.flatMap((p) => (p.code === undefined ? [] : [p.code])),
    )
  }
  return { config: result, help }
}
