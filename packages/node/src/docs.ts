/** Generated README sections (see scripts/sync-readme.mjs and test/readme.test.ts). */
import { errorCatalog, errorCodes } from '@kvstore/protocol/errors'

export function errorTableMarkdown(): string {
  const rows = ['| code | HTTP status | meaning |', '|---|---|---|']
  for (const code of errorCodes) {
    rows.push(`| \`${code}\` | ${errorCatalog[code].status} | ${errorCatalog[code].description} |`)
  }
  return rows.join('\n')
}
