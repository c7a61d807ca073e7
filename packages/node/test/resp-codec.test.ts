import {
  RespParser,
  RespProtocolError,
  array,
  bulk,
  encode,
  int,
  map,
  nil,
  ok,
} from '../src/resp/codec.js'

const limits = { commandBytesMax: 1024, argsMax: 8 }

function parseAll(parser: RespParser): string[][] {
  const out: string[][] = []
  for (let args = parser.next(); args !== null; args = parser.next())
    out.push(args.map((a) => a.toString('utf8')))
  return out
}

function encoded(reply: Parameters<typeof encode>[0], proto: 2 | 3): string {
  const out: Buffer[] = []
  encode(reply, proto, out)
  return Buffer.concat(out).toString('utf8')
}

describe('the RESP parser', () => {
  it('parses pipelined arrays split at every byte', () => {
    const wire = Buffer.from('*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nx\r\ny!\r\n*1\r\n$4\r\nPING\r\n')
    const parser = new RespParser(limits)
    const got: string[][] = []
    for (const byte of wire) {
      parser.feed(Buffer.from([byte]))
      got.push(...parseAll(parser))
    }
    expect(got).toEqual([['SET', 'a', 'x\r\ny!'], ['PING']])
    expect(parser.bufferedBytes).toBe(0)
  })

  it('parses inline commands with quotes', () => {
    const parser = new RespParser(limits)
    parser.feed(Buffer.from('set "a b" \'c d\' e\r\nPING\n'))
    expect(parseAll(parser)).toEqual([['set', 'a b', 'c d', 'e'], ['PING']])
  })

  it('refuses too many arguments, long bulks and long commands with a protocol error', () => {
    const tooMany = new RespParser(limits)
    tooMany.feed(Buffer.from('*9\r\n'))
    expect(() => tooMany.next()).toThrow(RespProtocolError)
    const longBulk = new RespParser(limits)
    longBulk.feed(Buffer.from('*1\r\n$2000\r\n'))
    expect(() => longBulk.next()).toThrow(/respCommandBytesMax/)
    const longLine = new RespParser(limits)
    longLine.feed(Buffer.alloc(1100, 0x61))
    expect(() => longLine.next()).toThrow(RespProtocolError)
    const notBulk = new RespParser(limits)
    notBulk.feed(Buffer.from('*1\r\n:1\r\n'))
    expect(() => notBulk.next()).toThrow(/expected '\$'/)
    const badLength = new RespParser(limits)
    badLength.feed(Buffer.from('*x\r\n'))
    expect(() => badLength.next()).toThrow(/invalid multibulk length/)
  })
})

describe('the RESP encoders', () => {
  it('writes RESP2 and RESP3 forms', () => {
    expect(encoded(ok, 2)).toBe('+OK\r\n')
    expect(encoded(int(-3), 2)).toBe(':-3\r\n')
    expect(encoded(bulk('hé'), 2)).toBe('$3\r\nhé\r\n')
    expect(encoded(nil, 2)).toBe('$-1\r\n')
    expect(encoded(nil, 3)).toBe('_\r\n')
    expect(encoded(array([bulk('a'), nil]), 2)).toBe('*2\r\n$1\r\na\r\n$-1\r\n')
    expect(encoded(map([[bulk('k'), int(1)]]), 2)).toBe('*2\r\n$1\r\nk\r\n:1\r\n')
    expect(encoded(map([[bulk('k'), int(1)]]), 3)).toBe('%1\r\n$1\r\nk\r\n:1\r\n')
  })
})
