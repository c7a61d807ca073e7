/**
 * docs/reference/openapi.md and openapi.json: the OpenAPI description rendered into the docs.
 * `pnpm sync-docs` (scripts/sync-docs.mjs) writes them from real nodes' /openapi.json (a
 * standalone node for single-leader mode, a one-member leaderless node), and test/docs.test.ts
 * fails when the committed pages and what the nodes generate disagree.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../config.js'
import { KvNode } from '../node.js'

/** The part of an OpenAPI document the page is rendered from. */
export interface OpenApiDocument {
  info: { title: string; version: string }
  tags?: { name: string; description?: string }[]
  paths: Record<string, Record<string, OpenApiOperation>>
}

interface OpenApiOperation {
  summary?: string
  tags?: string[]
  security?: unknown[]
  parameters?: { name: string; in: string }[]
  requestBody?: { content?: Record<string, unknown> }
  responses?: Record<string, { content?: Record<string, unknown> }>
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port
      server.close(() => resolve(port))
    })
  })
}

/** Starts a node in a temporary directory, returns its description, and stops it. */
async function documentOf(args: string[]): Promise<OpenApiDocument> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-openapi-docs-'))
  try {
    const { config } = parseConfig(
      [
        '--data-dir',
        join(dir, 'data'),
        '--log-level',
        'silent',
        '--audit-log',
        'off',
        '--auth',
        'false',
        ...args,
      ],
      {},
    )
    const node = await KvNode.start(config, {
      onFatal: (err) => {
        throw err
      },
    })
    try {
      return JSON.parse(JSON.stringify(node.app.swagger())) as OpenApiDocument
    } finally {
      await node.stop('openapi docs generated')
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** The descriptions a single-leader (standalone) node and a leaderless node serve. */
export async function openApiDocuments(): Promise<{
  singleLeader: OpenApiDocument
  leaderless: OpenApiDocument
}> {
  const singleLeader = await documentOf(['--port', '0'])
  const client = await freePort()
  const peer = await freePort()
  const leaderless = await documentOf([
    '--port',
    String(client),
    '--mode',
    'leaderless',
    '--id',
    'n1',
    '--members',
    `n1@http://127.0.0.1:${client}@http://127.0.0.1:${peer}`,
    '--replicas',
    '1',
    '--unsafe-plaintext-peers',
  ])
  return { singleLeader, leaderless }
}

function cell(text: string): string {
  return text.replaceAll('|', '\\|').replaceAll('<', '&lt;').replaceAll('>', '&gt;')
}

/** One table per tag: each operation with its summary, inputs and answers. */
export function openApiMarkdown(doc: OpenApiDocument): string {
  const byTag = new Map<string, string[]>()
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = op.tags?.[0] ?? 'other'
      const inputs = [
        ...(op.parameters ?? []).filter((p) => p.in === 'query').map((p) => `?${p.name}`),
        ...Object.keys(op.requestBody?.content ?? {}).map((t) => `body ${t}`),
      ]
      const answers = Object.entries(op.responses ?? {})
        .filter(([status]) => !status.startsWith('4') && !status.startsWith('5'))
        .map(([status, r]) => {
          const types = Object.keys(r.content ?? {})
          return types.length === 0 ? status : `${status} ${types.join(', ')}`
        })
      const access = Array.isArray(op.security) && op.security.length === 0 ? ' (public)' : ''
      const rows = byTag.get(tag) ?? []
      rows.push(
        `| \`${method.toUpperCase()} ${path}\` | ${cell(op.summary ?? '')}${access} | ${cell(inputs.join(', '))} | ${cell(answers.join('; '))} |`,
      )
      byTag.set(tag, rows)
    }
  }
  const out: string[] = []
  const tags = [...(doc.tags ?? []).map((t) => t.name), ...byTag.keys()]
  for (const tag of [...new Set(tags)]) {
    const rows = byTag.get(tag)
    if (rows === undefined) continue
    const about = doc.tags?.find((t) => t.name === tag)?.description
    out.push(`#### ${about ?? tag}`, '')
    out.push('| operation | does | inputs | answers (errors: `KvError`, 4XX/5XX) |')
    out.push('|---|---|---|---|')
    out.push(...rows, '')
  }
  return out.join('\n').trimEnd()
}
