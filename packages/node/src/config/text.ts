/** The option table as text: `kv-node --help` and the README's configuration table. */
import { configSpec } from './spec.js'
import { KiB, MiB, type OptionSpec } from './types.js'

function defaultText(spec: OptionSpec): string {
  if (spec.defaultText !== undefined) return spec.defaultText
  const value = spec.default
  if (typeof value === 'number' && spec.kind === 'bytes') return formatBytes(value)
  return String(value)
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0) return `${bytes / (1024 * MiB)}GiB`
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB}MiB`
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB}KiB`
  return String(bytes)
}

const groupTitles: Record<OptionSpec['group'], string> = {
  node: 'Node',
  security: 'Security (TLS and authentication)',
  cluster: 'Cluster',
  storage: 'Storage',
  limits: 'Limits',
  http: 'HTTP',
  leaderless: 'Leaderless mode',
}

/** The text of `kv-node --help`. */
export function helpText(): string {
  const lines = [
    'kv-node: run one storage node of the key-value store.',
    '',
    'Usage: kv-node [options]',
    '',
    'Each option can also come from its environment variable or from a JSON config file',
    '(--config FILE or KV_CONFIG, keys as in the README). Flags beat the environment, which',
    'beats the file. Sizes accept KiB, MiB and GiB (for example 4MiB). Booleans take',
    'true/false, and --no-<flag> sets one to false.',
    '',
    '  --config FILE  (KV_CONFIG)',
    '      JSON file with options, such as {"nodeId": "n1", "port": 7001}.',
    '  --help',
    '      Show this help.',
  ]
  for (const group of Object.keys(groupTitles) as OptionSpec['group'][]) {
    lines.push('', `${groupTitles[group]}:`)
    for (const spec of configSpec.filter((s) => s.group === group)) {
      const values = spec.kind === 'enum' ? ` (${spec.values?.join('|')})` : ''
      lines.push(
        `  ${spec.flag} <${spec.kind}>${values}  (${spec.env}, default ${defaultText(spec)})`,
      )
      lines.push(`      ${spec.description}`)
    }
  }
  return `${lines.join('\n')}\n`
}

/** An option's meaning in the markdown table: an unsafe switch says so in bold first. */
function meaning(spec: OptionSpec): string {
  if (spec.unsafe !== true) return spec.description
  return `**UNSAFE**${spec.description.replace(/^UNSAFE/, '')}`
}

/** The README's configuration table (generated; see scripts/sync-readme.mjs). */
export function configTableMarkdown(): string {
  const rows = [
    '| option (config file key) | flag | environment | default | meaning |',
    '|---|---|---|---|---|',
  ]
  for (const spec of configSpec) {
    rows.push(
      `| \`${spec.key}\` | \`${spec.flag}\` | \`${spec.env}\` | ${defaultText(spec)} | ${meaning(spec)} |`,
    )
  }
  return rows.join('\n')
}
