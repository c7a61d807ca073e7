/** Reading a node's Prometheus /metrics. */

/** The whole /metrics text of the node at `url`. */
export async function metricsText(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text()
}

/** The value of the series `name{labels}` (`labels` '' for none) in `text`; 0 when absent. */
export function metricValue(text: string, name: string, labels = ''): number {
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}${labels === '' ? ' ' : `{${labels}}`}`))
  return line === undefined ? 0 : Number(line.split(' ').at(-1))
}

/** The value of the series `name{labels}` on the node at `url`; 0 when absent. */
export async function metric(url: string, name: string, labels = ''): Promise<number> {
  return metricValue(await metricsText(url), name, labels)
}

/** The sum of every series of `name`, whatever its labels, on the node at `url`. */
export async function metricTotal(url: string, name: string): Promise<number> {
  const text = await metricsText(url)
  let total = 0
  for (const line of text.split('\n')) {
    if (line.startsWith(name) && (line[name.length] === ' ' || line[name.length] === '{')) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1))
    }
  }
  return total
}
