/**
 * The reference pages generated from the code: the error catalog, the configuration options and
 * the metrics. `pnpm sync-docs` (scripts/sync-docs.mjs) writes each table between its markers in
 * docs/reference/, and test/docs.test.ts fails when a page and the code disagree.
 */
import { errorCatalog, errorCodes } from '@kvstore/protocol/errors'
import { configSpec, configTableMarkdown, type OptionSpec } from './config.js'
import { metricsCatalog, type MetricInfo } from './metrics.js'

/** A generated section: the file under the repository root, its marker name and its body. */
export interface GeneratedSection {
  file: string
  section: string
  render: () => string
}

export const generatedSections: readonly GeneratedSection[] = [
  { file: 'docs/reference/errors.md', section: 'error-codes', render: errorTableMarkdown },
  { file: 'docs/reference/configuration.md', section: 'config', render: configurationMarkdown },
  { file: 'docs/reference/metrics.md', section: 'metrics', render: metricsMarkdown },
]

/**
 * Text for a table cell: a `|` would end the cell (also inside a code span), and `<id>` outside
 * a code span would be taken for an HTML tag and vanish.
 */
function cell(text: string): string {
  return text
    .split(/(`[^`]*`)/)
    .map((part, i) => (i % 2 === 1 ? part : part.replaceAll('<', '&lt;').replaceAll('>', '&gt;')))
    .join('')
    .replaceAll('|', '\\|')
}

export function errorTableMarkdown(): string {
  const rows = ['| code | HTTP status | meaning |', '|---|---|---|']
  for (const code of errorCodes) {
    rows.push(
      `| \`${code}\` | ${errorCatalog[code].status} | ${cell(errorCatalog[code].description)} |`,
    )
  }
  return rows.join('\n')
}

const groupTitles: Record<OptionSpec['group'], string> = {
  node: 'Node',
  security: 'Security',
  cluster: 'Cluster',
  leaderless: 'Leaderless mode',
  storage: 'Storage',
  limits: 'Limits',
  http: 'HTTP',
  backup: 'Backup and archive',
}

/**
 * The default of each option as `kv-node --help` writes it, read from config.ts's own table (its
 * fourth column), so that the two never disagree.
 */
function defaultTexts(): Map<string, string> {
  const defaults = new Map<string, string>()
  for (const row of configTableMarkdown().split('\n').slice(2)) {
    const cells = row.split(' | ')
    const key = /^\| `([^`]+)`$/.exec(cells[0] ?? '')?.[1]
    if (key !== undefined && cells[3] !== undefined) defaults.set(key, cells[3])
  }
  return defaults
}

/** Every option of kv-node, one table per group, in the order of the config spec. */
export function configurationMarkdown(): string {
  const defaults = defaultTexts()
  const groups = new Map<OptionSpec['group'], OptionSpec[]>()
  for (const spec of configSpec) {
    const list = groups.get(spec.group) ?? []
    list.push(spec)
    groups.set(spec.group, list)
  }
  const out: string[] = []
  for (const [group, specs] of groups) {
    out.push(`### ${groupTitles[group]}`, '')
    out.push('| option (config file key) | flag | environment | default | meaning |')
    out.push('|---|---|---|---|---|')
    for (const spec of specs) {
      const values = spec.values ? ` One of: ${spec.values.map((v) => `\`${v}\``).join(', ')}.` : ''
      out.push(
        `| \`${spec.key}\` | \`${spec.flag}\` | \`${spec.env}\` | ${cell(defaults.get(spec.key) ?? '')} | ${cell(spec.description + values)} |`,
      )
    }
    out.push('')
  }
  return out.join('\n').trimEnd()
}

const scopeTitles: Record<MetricInfo['scope'], string> = {
  'every node': 'Every node',
  'single-leader': 'Single-leader mode (the replicator)',
  sharded: 'Sharded single-leader groups (--shard-map)',
  regions: 'Regions (--region, multi-leader)',
  leaderless: 'Leaderless mode (the leaderless engine)',
}

/** Every metric a node registers, by who serves it, in registration order. */
export function metricsMarkdown(): string {
  const catalog = metricsCatalog()
  const table = (metrics: MetricInfo[]): string[] => [
    '| metric | type | labels | meaning |',
    '|---|---|---|---|',
    ...metrics.map(
      (m) =>
        `| \`${m.name}\` | ${m.type} | ${m.labels.map((l) => `\`${l}\``).join(', ')} | ${cell(m.help)} |`,
    ),
  ]
  const out: string[] = []
  for (const scope of [
    'every node',
    'single-leader',
    'sharded',
    'regions',
    'leaderless',
  ] as const) {
    out.push(`### ${scopeTitles[scope]}`, '')
    out.push(...table(catalog.filter((m) => m.scope === scope && m.origin === 'kvstore')), '')
  }
  out.push('### Node.js process (prom-client defaults, every node)', '')
  out.push(...table(catalog.filter((m) => m.origin === 'process')))
  return out.join('\n')
}
