/**
 * Runs the core's text traces, testdata/*.txt (see datadriven.ts and trace.ts). After a change
 * in behaviour, `KV_REWRITE=1 pnpm vitest run --project unit packages/core/test/trace.test.ts`
 * rewrites the expected outputs; review the diff.
 */
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseTrace, runTrace } from './datadriven.js'
import { Trace } from './trace.js'

const dir = join(fileURLToPath(new URL('.', import.meta.url)), 'testdata')
const files = readdirSync(dir).filter((f) => f.endsWith('.txt'))

describe('core text traces', () => {
  it('finds the trace files', () => {
    expect(files.length).toBeGreaterThan(0)
  })

  it.each(files)('%s', (file) => {
    runTrace(join(dir, file), new Trace().run)
  })
})

describe('the trace format', () => {
  it('parses commands, arguments, input and expected output', () => {
    const { blocks } = parseTrace(
      'x.txt',
      '# comment\n\ncmd a b k=v l=1,2\ninput line\n----\nout 1\nout 2\n\nnext\n----\nok\n',
    )
    expect(blocks).toHaveLength(2)
    const first = blocks[0]?.command
    expect(first?.name).toBe('cmd')
    expect(first?.words).toEqual(['a', 'b'])
    expect([...(first?.args ?? [])]).toEqual([
      ['k', 'v'],
      ['l', '1,2'],
    ])
    expect(first?.input).toEqual(['input line'])
    expect(first?.position).toBe('x.txt:3')
    expect(blocks[0]?.expected).toBe('out 1\nout 2')
    expect(blocks[1]?.expected).toBe('ok')
  })

  it('refuses a command without ----', () => {
    expect(() => parseTrace('x.txt', 'cmd\n\n')).toThrow('x.txt:1: no ----')
  })
})
