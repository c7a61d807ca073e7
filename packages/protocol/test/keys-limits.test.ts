import { checkLimits, keyToBytes, limitsDefault, KvError } from '../src/index.js'

describe('keyToBytes', () => {
  it.each([
    ['a', 1],
    ['users/42/profile', 16],
    ['ключ', 8],
    ['emoji 🎉', 10],
    ['a.b/..c/.d/e..', 14],
    ['...', 3],
  ])('accepts %j', (key, bytes) => {
    expect(keyToBytes(key, 1024)).toHaveLength(bytes)
  })

  it.each([
    ['', 'KV_ERR_INVALID_KEY'],
    ['a\u0000b', 'KV_ERR_INVALID_KEY'],
    ['line\nbreak', 'KV_ERR_INVALID_KEY'],
    ['del\u007f', 'KV_ERR_INVALID_KEY'],
    ['lone \ud800 surrogate', 'KV_ERR_INVALID_KEY'],
    ['.', 'KV_ERR_INVALID_KEY'],
    ['..', 'KV_ERR_INVALID_KEY'],
    ['a/../b', 'KV_ERR_INVALID_KEY'],
    ['./a', 'KV_ERR_INVALID_KEY'],
    ['a/.', 'KV_ERR_INVALID_KEY'],
    ['x'.repeat(1025), 'KV_ERR_KEY_TOO_LARGE'],
    ['é'.repeat(513), 'KV_ERR_KEY_TOO_LARGE'],
  ])('refuses %j with %s', (key, code) => {
    const err = (() => {
      try {
        keyToBytes(key, 1024)
      } catch (e) {
        return e
      }
      return null
    })()
    expect(err).toBeInstanceOf(KvError)
    expect((err as KvError).code).toBe(code)
  })
})

describe('checkLimits', () => {
  it('accepts the defaults', () => {
    expect(checkLimits({ ...limitsDefault })).toEqual([])
  })
  it('reports incoherent or out-of-range limits', () => {
    const problems = checkLimits({
      ...limitsDefault,
      valueBytesMax: 8 << 20,
      requestBodyBytesMax: 1 << 20,
      keyBytesMax: 1 << 20,
      listLimitDefault: 0,
    })
    expect(problems.join('\n')).toMatch(/requestBodyBytesMax .* must be at least valueBytesMax/)
    expect(problems.join('\n')).toMatch(/keyBytesMax is 1048576, above its ceiling/)
    expect(problems.join('\n')).toMatch(/listLimitDefault must be a positive integer/)
  })
})
