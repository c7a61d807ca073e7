#!/usr/bin/env node
/**
 * copy-certs SRC DST UID: copies the certificates `kv certs init` made (SRC, on the host) into
 * DST (a volume), owned by UID, keeping private keys and passwords readable by their owner
 * only. The compose files run it once, as root, so that the node image's unprivileged user can
 * read its key while the host's copies stay 0600.
 */
import { chownSync, copyFileSync, chmodSync, mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

const [src, dst, uidText] = process.argv.slice(2)
if (src === undefined || dst === undefined || uidText === undefined || !/^\d+$/.test(uidText)) {
  process.stderr.write('usage: copy-certs SRC DST UID\n')
  process.exit(2)
}
const uid = Number(uidText)
const files = readdirSync(src).filter(
  (f) =>
    f.endsWith('.crt') ||
    f.endsWith('.key') ||
    f === 'root.password' ||
    f === 'auth.secret' ||
    f === 'cluster-id',
)
if (!files.includes('ca.crt')) {
  process.stderr.write(
    `copy-certs: ${src} holds no ca.crt; make the certificates first: kv certs init --dir deploy/certs --members n1,n2,n3\n`,
  )
  process.exit(1)
}
mkdirSync(dst, { recursive: true })
for (const file of files) {
  // The CA's key signs certificates; nodes never need it.
  if (file === 'ca.key') continue
  const to = join(dst, file)
  copyFileSync(join(src, file), to)
  chmodSync(to, file.endsWith('.crt') || file === 'cluster-id' ? 0o644 : 0o600)
  chownSync(to, uid, uid)
}
chownSync(dst, uid, uid)
chmodSync(dst, 0o700)
process.stdout.write(`copied ${files.length - 1} files into ${dst} for uid ${uid}\n`)
