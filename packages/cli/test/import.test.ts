import { ImportError, parseCsvLine } from '../src/import.js'

describe('CSV lines', () => {
  it.each([
    ['a,b', ['a', 'b']],
    ['"a,b",c', ['a,b', 'c']],
    ['"say ""hi""",x', ['say "hi"', 'x']],
    ['a,,c', ['a', '', 'c']],
    ['"",x', ['', 'x']],
  ])('%j', (line, fields) => {
    expect(parseCsvLine(line, 1)).toEqual(fields)
  })

  it('refuses an unterminated quote with its line number', () => {
    expect(() => parseCsvLine('"open,x', 7)).toThrow(ImportError)
    expect(() => parseCsvLine('"open,x', 7)).toThrow(/line 7/)
  })
})
