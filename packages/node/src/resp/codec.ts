/**
 * RESP framing: a parser for what clients send (arrays of bulk strings, and inline commands as
 * redis-cli and telnet send them) and the encoders of replies in RESP2 and RESP3.
 *
 * The parser is incremental and bounded: one command may take at most `commandBytesMax` bytes
 * and `argsMax` arguments; past either it throws a RespProtocolError and the connection is
 * closed after the error is sent, as Redis does.
 */

export class RespProtocolError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RespProtocolError'
  }
}

const CR = 0x0d
const LF = 0x0a

export interface ParserLimits {
  commandBytesMax: number
  argsMax: number
}

/** Digits of a length line, at most; a length needs no more. */
const lengthDigitsMax = 20

export class RespParser {
  private buffer: Buffer = Buffer.alloc(0)
  private offset = 0

  constructor(private readonly limits: ParserLimits) {}

  /** Bytes received and not yet parsed into a command. */
  get bufferedBytes(): number {
    return this.buffer.length - this.offset
  }

  feed(chunk: Buffer): void {
    if (this.offset >= this.buffer.length) {
      this.buffer = chunk
      this.offset = 0
    } else {
      this.buffer = Buffer.concat([this.buffer.subarray(this.offset), chunk])
      this.offset = 0
    }
  }

  /** The next whole command, or null when more bytes are needed. */
  next(): Buffer[] | null {
    if (this.offset >= this.buffer.length) return null
    const start = this.offset
    const parsed =
      this.buffer[start] === 0x2a /* * */ ? this.parseArray(start) : this.parseInline(start)
    if (parsed === null) {
      if (this.buffer.length - start > this.limits.commandBytesMax)
        throw new RespProtocolError(
          `a command is longer than ${this.limits.commandBytesMax} bytes (respCommandBytesMax)`,
        )
      return null
    }
    this.offset = parsed.end
    if (this.offset >= this.buffer.length) {
      this.buffer = Buffer.alloc(0)
      this.offset = 0
    }
    return parsed.args
  }

  /** The position after the CRLF of the line starting at `from`, and the line; null: incomplete. */
  private line(from: number, maxBytes: number): { text: string; end: number } | null {
    const at = this.buffer.indexOf(LF, from)
    if (at < 0) {
      if (this.buffer.length - from > maxBytes)
        throw new RespProtocolError(`a line longer than ${maxBytes} bytes`)
      return null
    }
    if (at - from > maxBytes) throw new RespProtocolError(`a line longer than ${maxBytes} bytes`)
    const stop = at > from && this.buffer[at - 1] === CR ? at - 1 : at
    return { text: this.buffer.toString('latin1', from, stop), end: at + 1 }
  }

  private length(from: number, kind: string): { value: number; end: number } | null {
    const line = this.line(from, lengthDigitsMax + 2)
    if (line === null) return null
    const text = line.text.slice(1)
    if (!/^-?[0-9]{1,18}$/.test(text))
      throw new RespProtocolError(`invalid ${kind} length ${JSON.stringify(text)}`)
    return { value: Number(text), end: line.end }
  }

  private parseArray(start: number): { args: Buffer[]; end: number } | null {
    const head = this.length(start, 'multibulk')
    if (head === null) return null
    const count = head.value
    if (count > this.limits.argsMax)
      throw new RespProtocolError(
        `a command has ${count} arguments; at most ${this.limits.argsMax} (respArgsMax)`,
      )
    let at = head.end
    if (count <= 0) return { args: [], end: at }
    const args: Buffer[] = []
    for (let i = 0; i < count; i++) {
      if (at >= this.buffer.length) return null
      if (this.buffer[at] !== 0x24 /* $ */)
        throw new RespProtocolError(
          `expected '$', got ${JSON.stringify(String.fromCharCode(this.buffer[at] as number))}`,
        )
      const bulk = this.length(at, 'bulk')
      if (bulk === null) return null
      if (bulk.value < 0 || bulk.value > this.limits.commandBytesMax)
        throw new RespProtocolError(
          `invalid bulk length ${bulk.value}; at most ${this.limits.commandBytesMax} (respCommandBytesMax)`,
        )
      const dataEnd = bulk.end + bulk.value
      if (dataEnd - start > this.limits.commandBytesMax)
        throw new RespProtocolError(
          `a command is longer than ${this.limits.commandBytesMax} bytes (respCommandBytesMax)`,
        )
      if (this.buffer.length < dataEnd + 2) return null
      if (this.buffer[dataEnd] !== CR || this.buffer[dataEnd + 1] !== LF)
        throw new RespProtocolError('a bulk string does not end with CRLF')
      args.push(this.buffer.subarray(bulk.end, dataEnd))
      at = dataEnd + 2
    }
    return { args, end: at }
  }

  /** An inline command: words separated by spaces, with "double" and 'single' quotes. */
  private parseInline(start: number): { args: Buffer[]; end: number } | null {
    const line = this.line(start, this.limits.commandBytesMax)
    if (line === null) return null
    const raw = this.buffer.toString('utf8', start, line.end).replace(/\r?\n$/, '')
    const args: Buffer[] = []
    const word = /\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+))/gy
    let match: RegExpExecArray | null
    let consumed = 0
    while ((match = word.exec(raw)) !== null) {
      consumed = word.lastIndex
      if (match[1] !== undefined)
        args.push(
          Buffer.from(
            match[1].replace(/\\(.)/g, (_m, c: string) => unescape(c)),
            'utf8',
          ),
        )
      else args.push(Buffer.from(match[2] ?? match[3] ?? '', 'utf8'))
      if (args.length > this.limits.argsMax)
        throw new RespProtocolError(
          `a command has more than ${this.limits.argsMax} arguments (respArgsMax)`,
        )
    }
    if (raw.slice(consumed).trim() !== '')
      throw new RespProtocolError('unbalanced quotes in an inline command')
    return { args, end: line.end }
  }
}

function unescape(c: string): string {
  switch (c) {
    case 'n':
      return '\n'
    case 'r':
      return '\r'
    case 't':
      return '\t'
    default:
      return c
  }
}

/** A reply, built before it is encoded in the connection's protocol version. */
export type Reply =
  | { t: 'simple'; v: string }
  | { t: 'error'; v: string }
  | { t: 'int'; v: number }
  | { t: 'bulk'; v: Buffer | string | null }
  | { t: 'array'; v: Reply[] | null }
  | { t: 'map'; v: [Reply, Reply][] }
  | { t: 'raw'; v: Buffer }

export const ok: Reply = { t: 'simple', v: 'OK' }
export const nil: Reply = { t: 'bulk', v: null }
export const simple = (v: string): Reply => ({ t: 'simple', v })
export const error = (v: string): Reply => ({ t: 'error', v: v.replace(/[\r\n]+/g, ' ') })
export const int = (v: number): Reply => ({ t: 'int', v })
export const bulk = (v: Buffer | string | null): Reply => ({ t: 'bulk', v })
export const array = (v: Reply[] | null): Reply => ({ t: 'array', v })
export const map = (v: [Reply, Reply][]): Reply => ({ t: 'map', v })

/** Encodes `reply` for RESP2 (`proto` 2) or RESP3 (3) into `out`. */
export function encode(reply: Reply, proto: 2 | 3, out: Buffer[]): void {
  switch (reply.t) {
    case 'simple':
      out.push(Buffer.from(`+${reply.v}\r\n`, 'utf8'))
      return
    case 'error':
      out.push(Buffer.from(`-${reply.v}\r\n`, 'utf8'))
      return
    case 'int':
      out.push(Buffer.from(`:${reply.v}\r\n`, 'latin1'))
      return
    case 'bulk': {
      if (reply.v === null) {
        out.push(Buffer.from(proto === 3 ? '_\r\n' : '$-1\r\n', 'latin1'))
        return
      }
      const data = typeof reply.v === 'string' ? Buffer.from(reply.v, 'utf8') : reply.v
      out.push(Buffer.from(`$${data.length}\r\n`, 'latin1'), data, crlf)
      return
    }
    case 'array':
      if (reply.v === null) {
        out.push(Buffer.from(proto === 3 ? '_\r\n' : '*-1\r\n', 'latin1'))
        return
      }
      out.push(Buffer.from(`*${reply.v.length}\r\n`, 'latin1'))
      for (const item of reply.v) encode(item, proto, out)
      return
    case 'map':
      out.push(
        Buffer.from(
          proto === 3 ? `%${reply.v.length}\r\n` : `*${reply.v.length * 2}\r\n`,
          'latin1',
        ),
      )
      for (const [k, v] of reply.v) {
        encode(k, proto, out)
        encode(v, proto, out)
      }
      return
    case 'raw':
      out.push(reply.v)
      return
  }
}

const crlf = Buffer.from('\r\n', 'latin1')
