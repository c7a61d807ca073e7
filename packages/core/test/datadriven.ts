/**
 * Text-trace tests in the style of etcd's datadriven package (`testdata/*.txt`): a file is a
 * list of commands, each followed by `----` and the output it must produce.
 *
 *     # A comment.
 *     propose a n=3
 *     ----
 *     ok
 *
 * A command is a name and arguments (`word` or `key=value`, `key=v1,v2`); input lines may
 * follow it before the `----`. The expected output runs to the next blank line. With
 * KV_REWRITE=1 the files are rewritten with what the commands now print, so a change in
 * behaviour is reviewed as a diff of the traces.
 */
import { readFileSync, writeFileSync } from 'node:fs'

export interface TraceCommand {
  name: string
  /** Bare words, in order. */
  words: string[]
  /** `key=value` arguments. */
  args: Map<string, string>
  /** Lines between the command and the `----`. */
  input: string[]
  /** `file:line` of the command, for messages. */
  position: string
}

interface Block {
  command: TraceCommand
  /** Lines of the file holding the expected output: [start, end). */
  outputStart: number
  outputEnd: number
  expected: string
}

export function parseTrace(file: string, text: string): { lines: string[]; blocks: Block[] } {
  const lines = text.split('\n')
  const blocks: Block[] = []
  let i = 0
  while (i < lines.length) {
    const line = (lines[i] as string).trim()
    if (line === '' || line.startsWith('#')) {
      i++
      continue
    }
    const position = `${file}:${i + 1}`
    const [name, ...rest] = line.split(/\s+/)
    const words: string[] = []
    const args = new Map<string, string>()
    for (const token of rest) {
      const eq = token.indexOf('=')
      if (eq > 0) args.set(token.slice(0, eq), token.slice(eq + 1))
      else words.push(token)
    }
    i++
    const input: string[] = []
    while (i < lines.length && lines[i] !== '----') {
      if ((lines[i] as string).trim() === '')
        throw new Error(`${position}: no ---- after the command`)
      input.push(lines[i] as string)
      i++
    }
    if (i >= lines.length) throw new Error(`${position}: no ---- after the command`)
    i++
    const outputStart = i
    while (i < lines.length && (lines[i] as string).trim() !== '') i++
    blocks.push({
      command: { name: name as string, words, args, input, position },
      outputStart,
      outputEnd: i,
      expected: lines.slice(outputStart, i).join('\n'),
    })
  }
  return { lines, blocks }
}

/**
 * Runs every command of `path` through `run` and checks its output (or, with KV_REWRITE=1,
 * writes the outputs into the file). Outputs may not contain blank lines: each ends at one.
 */
export function runTrace(path: string, run: (command: TraceCommand) => string): void {
  const text = readFileSync(path, 'utf8')
  const { lines, blocks } = parseTrace(path, text)
  const rewrite = process.env.KV_REWRITE === '1'
  const outputs: string[] = []
  for (const block of blocks) {
    let actual: string
    try {
      actual = run(block.command).replace(/\n+$/, '')
    } catch (err) {
      actual = `error: ${(err as Error).message}`
    }
    if (actual === '') actual = 'ok'
    if (actual.split('\n').some((l) => l.trim() === '')) {
      throw new Error(`${block.command.position}: output has a blank line:\n${actual}`)
    }
    outputs.push(actual)
    if (!rewrite && actual !== block.expected) {
      throw new Error(
        `${block.command.position}: ${[block.command.name, ...block.command.input].join(' ')}\n` +
          `expected:\n${block.expected}\nactual:\n${actual}\n(KV_REWRITE=1 rewrites the file)`,
      )
    }
  }
  if (!rewrite) return
  const out: string[] = []
  let at = 0
  blocks.forEach((block, i) => {
    out.push(...lines.slice(at, block.outputStart), outputs[i] as string)
    at = block.outputEnd
  })
  out.push(...lines.slice(at))
  writeFileSync(path, out.join('\n'))
}
