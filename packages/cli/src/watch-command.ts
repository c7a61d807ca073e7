/**
 * `kv watch [PREFIX]`: the committed changes under a prefix, as they commit, through the SDK's
 * `watch()` (which resumes by itself on another member). One line per change:
 * `LSN put KEY VALUE`, `LSN delete KEY`, `LSN batch|expire` followed by its ops; with --json,
 * one NDJSON event a line (values in base64, as the API sends them).
 */
import type { KvClient, WatchEvent } from '@kvstore/client'

export interface WatchCommandOptions {
  fromLsn: number | undefined
  count: number | undefined
  values: boolean
  progress: boolean
  json: boolean
}

function printable(value: Buffer | undefined): string {
  if (value === undefined) return ''
  const text = value.toString('utf8')
  // Binary or multi-line values are shown as base64, so one change stays one line.
  // eslint-disable-next-line no-control-regex
  return Buffer.from(text, 'utf8').equals(value) && !/[\u0000-\u001f]/.test(text)
    ? text
    : `base64:${value.toString('base64')}`
}

function lineOf(event: WatchEvent): string {
  switch (event.type) {
    case 'progress':
      return `${event.lsn} progress commitLsn=${event.commitLsn}`
    case 'put':
      return `${event.lsn} put ${event.key}${event.value !== undefined ? ` ${printable(event.value)}` : ''}`
    case 'delete':
      return `${event.lsn} delete ${event.key}`
    case 'batch':
    case 'expire':
      return `${event.lsn} ${event.type} ${event.ops
        .map((op) =>
          op.type === 'put'
            ? `put ${op.key}${op.value !== undefined ? `=${printable(op.value)}` : ''}`
            : `delete ${op.key}`,
        )
        .join(', ')}`
  }
}

function jsonOf(event: WatchEvent): string {
  const b64 = (v: Buffer | undefined) =>
    v === undefined ? {} : { valueBase64: v.toString('base64') }
  if (event.type === 'progress') return JSON.stringify(event)
  if ('ops' in event) {
    return JSON.stringify({
      type: event.type,
      lsn: event.lsn,
      version: event.version,
      ops: event.ops.map((op) => ({ type: op.type, key: op.key, ...b64(op.value) })),
    })
  }
  return JSON.stringify({
    type: event.type,
    key: event.key,
    ...b64(event.value),
    lsn: event.lsn,
    version: event.version,
  })
}

export async function runWatch(
  client: KvClient,
  prefix: string,
  stdout: NodeJS.WritableStream,
  options: WatchCommandOptions,
): Promise<number> {
  const controller = new AbortController()
  const stop = () => controller.abort()
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  let changes = 0
  try {
    for await (const event of client.watch(prefix, {
      ...(options.fromLsn !== undefined ? { fromLsn: options.fromLsn } : {}),
      values: options.values,
      progress: options.progress,
      signal: controller.signal,
    })) {
      const text = `${options.json ? jsonOf(event) : lineOf(event)}\n`
      if (!stdout.write(text)) await new Promise((r) => stdout.once('drain', r))
      if (event.type !== 'progress') changes++
      if (options.count !== undefined && changes >= options.count) break
    }
  } finally {
    process.removeListener('SIGINT', stop)
    process.removeListener('SIGTERM', stop)
  }
  return 0
}
