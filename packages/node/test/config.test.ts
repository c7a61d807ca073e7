import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, configSpec, helpText, parseConfig } from '../src/index.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-config-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('parseConfig', () => {
  it('has sane defaults', () => {
    const { config, help } = parseConfig([], {})
    expect(help).toBe(false)
    expect(config).toMatchObject({
      nodeId: 'n1',
      dataDir: './data/n1',
      host: '127.0.0.1',
      port: 7001,
      fsync: true,
      keyBytesMax: 1024,
      valueBytesMax: 1024 * 1024,
    })
  })

  it('takes flags over environment over config file over defaults', async () => {
    const file = join(dir, 'node.json')
    await writeFile(
      file,
      JSON.stringify({ nodeId: 'from-file', port: 7100, logLevel: 'debug', fsync: false }),
    )
    const { config } = parseConfig(['--config', file, '--port=7300'], {
      KV_PORT: '7200',
      KV_NODE_ID: 'from-env',
    })
    expect(config.port).toBe(7300)
    expect(config.nodeId).toBe('from-env')
    expect(config.logLevel).toBe('debug')
    expect(config.fsync).toBe(false)
    expect(config.dataDir).toBe('./data/from-env')
  })

  it('reads sizes with units and booleans in every spelling', () => {
    const { config } = parseConfig(
      [
        '--value-bytes-max',
        '4MiB',
        '--request-body-bytes-max',
        '8m',
        '--no-fsync',
        '--read-cache-bytes',
        '0',
      ],
      {},
    )
    expect(config.valueBytesMax).toBe(4 * 1024 * 1024)
    expect(config.requestBodyBytesMax).toBe(8 * 1024 * 1024)
    expect(config.fsync).toBe(false)
    expect(config.readCacheBytes).toBe(0)
    expect(parseConfig(['--fsync', 'off'], {}).config.fsync).toBe(false)
    expect(parseConfig([], { KV_FSYNC: 'yes' }).config.fsync).toBe(true)
  })

  it.each([
    [['--bogus'], /unknown option --bogus/],
    [['--fsnc'], /unknown option --fsnc/],
    [['--port', '70000'], /--port .* at most 65535/],
    [['--port', 'abc'], /--port .* whole number/],
    [['--port'], /--port needs a value/],
    [['--value-bytes-max', '2TB'], /--value-bytes-max .* whole number/],
    [['--key-bytes-max', '64KiB'], /at most 8192/],
    [['--log-level', 'loud'], /one of fatal, error/],
    [['--fsync', 'perhaps'], /true or false/],
    [['--value-bytes-max', '8MiB'], /requestBodyBytesMax .* must be at least valueBytesMax/],
    [['--list-limit-default', '5000'], /listLimitDefault .* must not exceed listLimitMax/],
    [['--config', '/nonexistent/kv.json'], /cannot read config file/],
    [
      ['--write-queue-bytes-max', '1MiB'],
      /writeQueueBytesMax .* must be at least requestBodyBytesMax/,
    ],
  ])('refuses %j', (argv, message) => {
    expect(() => parseConfig(argv, {})).toThrow(ConfigError)
    expect(() => parseConfig(argv, {})).toThrow(message)
  })

  it('refuses bad config files', async () => {
    const bad = join(dir, 'bad.json')
    await writeFile(bad, '{ nodeId: n1 }')
    expect(() => parseConfig(['--config', bad], {})).toThrow(/not valid JSON/)
    const unknown = join(dir, 'unknown.json')
    await writeFile(unknown, JSON.stringify({ nodeID: 'n1' }))
    expect(() => parseConfig(['--config', unknown], {})).toThrow(/unknown option "nodeID"/)
  })

  it('--help lists every option with its environment variable', () => {
    expect(parseConfig(['--help'], {}).help).toBe(true)
    const text = helpText()
    for (const spec of configSpec) {
      expect(text).toContain(spec.flag)
      expect(text).toContain(spec.env)
    }
  })
})
