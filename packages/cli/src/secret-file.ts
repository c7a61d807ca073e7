/** Files written whole or not at all, with their final mode from the start. */
import { randomBytes } from 'node:crypto'
import { open, rename, rm } from 'node:fs/promises'

/** Writes `data` to `path` through a temporary file that has the final mode, then a rename. */
export async function writeAtomically(path: string, data: string, mode: number): Promise<void> {
  const temp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  const file = await open(temp, 'wx', mode)
  try {
    // The mode given to open() is cut by the umask; set it exactly.
    await file.chmod(mode)
    await file.writeFile(data)
    await file.sync()
  } catch (err) {
    await file.close()
    await rm(temp, { force: true })
    throw err
  }
  await file.close()
  try {
    await rename(temp, path)
  } catch (err) {
    await rm(temp, { force: true })
    throw err
  }
}

/** A file only its owner may read (mode 0600). */
export function writeSecretFile(path: string, data: string): Promise<void> {
  return writeAtomically(path, data, 0o600)
}
