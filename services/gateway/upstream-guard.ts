// The SSRF guard: which upstream addresses the gateway may dial. An upstream URL is set by an
// administrator, but a name can resolve anywhere (and re-resolve differently a second later),
// so the check is on the address actually dialled: the name is resolved here, every address
// it resolves to is checked, and the connection goes to the checked address (never to a
// second resolution). Loopback, private, link-local (cloud metadata lives there), shared,
// multicast, reserved and documentation ranges are refused in every spelling — the WHATWG
// URL parser already turns decimal (2852039166), octal (0177.0.0.1) and hexadecimal IPv4 into
// dotted form, and IPv4-mapped or -translated IPv6 is checked as the IPv4 address it carries.
//
// UPSTREAM_ALLOWLIST lets an operator permit private upstreams: CIDRs (10.1.0.0/16, ::1/128)
// permit addresses; `host:port` entries permit one host (a name as written in the upstream
// URL, or an address) on one port.
import { BlockList, isIP } from "node:net"
import { lookup } from "node:dns/promises"

export class UpstreamNotAllowed extends Error {
  readonly code = "upstream_not_allowed"
}

const DENIED_V4: ReadonlyArray<[string, number]> = [
  ["0.0.0.0", 8], // "this network"; 0.0.0.0 reaches the local host
  ["10.0.0.0", 8],
  ["100.64.0.0", 10], // shared address space (carrier NAT)
  ["127.0.0.0", 8],
  ["169.254.0.0", 16], // link-local: 169.254.169.254 is the cloud metadata service
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.88.99.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4] // reserved, and 255.255.255.255
]
const DENIED_V6: ReadonlyArray<[string, number]> = [
  ["::", 96], // unspecified, loopback and the deprecated IPv4-compatible form
  ["64:ff9b::", 96], // NAT64: reaches IPv4 addresses
  ["64:ff9b:1::", 48],
  ["100::", 64], // discard
  ["2001::", 23], // IETF protocol assignments (Teredo and more)
  ["2001:db8::", 32],
  ["2002::", 16], // 6to4: carries an IPv4 address
  ["fc00::", 7], // unique local (fd00:ec2::254 is a metadata address)
  ["fe80::", 10],
  ["fec0::", 10],
  ["ff00::", 8]
]

const denied = new BlockList()
for (const [net, bits] of DENIED_V4) denied.addSubnet(net, bits, "ipv4")
for (const [net, bits] of DENIED_V6) denied.addSubnet(net, bits, "ipv6")

/** An address in its canonical form (IPv6 compressed, lower case), or undefined. */
const canonical = (address: string): string | undefined => {
  const bare = address.replace(/^\[|\]$/g, "")
  const family = isIP(bare)
  if (family === 4) return bare
  if (family !== 6) return undefined
  try {
    return new URL(`http://[${bare}]/`).hostname.replace(/^\[|\]$/g, "")
  } catch {
    return undefined
  }
}

/** The IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d) carries. */
const mappedV4 = (v6: string): string | undefined => {
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6)
  if (m === null) return undefined
  const hi = Number.parseInt(m[1]!, 16)
  const lo = Number.parseInt(m[2]!, 16)
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`
}

export interface Allowlist {
  readonly addresses: BlockList
  /** `host:port` entries, host lower-cased and without brackets. */
  readonly hostPorts: ReadonlySet<string>
}

/** Parses UPSTREAM_ALLOWLIST (comma-separated CIDRs and host:port entries); throws on a bad entry. */
export const parseAllowlist = (raw: string | undefined): Allowlist => {
  const addresses = new BlockList()
  const hostPorts = new Set<string>()
  for (const entry of (raw ?? "").split(",").map((e) => e.trim()).filter((e) => e !== "")) {
    const cidr = /^(.+)\/(\d{1,3})$/.exec(entry)
    if (cidr !== null) {
      const net = canonical(cidr[1]!)
      const bits = Number(cidr[2])
      const family = net === undefined ? 0 : isIP(net)
      if (net === undefined || bits > (family === 4 ? 32 : 128)) throw new Error(`not a CIDR: ${entry}`)
      addresses.addSubnet(net, bits, family === 4 ? "ipv4" : "ipv6")
      continue
    }
    const hp = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(entry)
    if (hp === null || Number(hp[2]) < 1 || Number(hp[2]) > 65535) throw new Error(`not a CIDR or host:port: ${entry}`)
    const host = hp[1]!.replace(/^\[|\]$/g, "").toLowerCase()
    hostPorts.add(`${canonical(host) ?? host}:${Number(hp[2])}`)
  }
  return { addresses, hostPorts }
}

/** True when the address is one the gateway must not dial unless allowlisted. */
export const isDenied = (address: string): boolean => {
  const a = canonical(address)
  if (a === undefined) return true
  if (isIP(a) === 4) return denied.check(a, "ipv4")
  const v4 = mappedV4(a)
  return v4 !== undefined ? denied.check(v4, "ipv4") : denied.check(a, "ipv6")
}

const allowedBy = (list: Allowlist, address: string, port: number): boolean => {
  const a = canonical(address)
  if (a === undefined) return false
  if (list.hostPorts.has(`${a}:${port}`)) return true
  if (isIP(a) === 4) return list.addresses.check(a, "ipv4")
  const v4 = mappedV4(a)
  return v4 !== undefined ? list.addresses.check(v4, "ipv4") || list.addresses.check(a, "ipv6") : list.addresses.check(a, "ipv6")
}

export interface CheckedTarget {
  /** The address to dial: the one that was checked. */
  readonly address: string
  readonly family: 4 | 6
}

export type Resolve = (host: string) => Promise<ReadonlyArray<{ address: string; family: number }>>

const systemResolve: Resolve = (host) => lookup(host, { all: true, verbatim: true })

/**
 * Resolves an upstream URL's host and checks it. Every address the name resolves to must be
 * allowed (a name with one public and one private address is refused: which one a retry would
 * use is not ours to predict). Throws UpstreamNotAllowed.
 */
export const checkUpstream = async (url: URL, list: Allowlist, resolve: Resolve = systemResolve): Promise<CheckedTarget> => {
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new UpstreamNotAllowed(`scheme ${url.protocol} is not allowed`)
  const port = url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port)
  const host = url.hostname.replace(/^\[|\]$/g, "").toLowerCase()
  const literal = canonical(host)
  const hostAllowed = list.hostPorts.has(`${literal ?? host}:${port}`)
  let addresses: ReadonlyArray<{ address: string; family: number }>
  if (literal !== undefined) addresses = [{ address: literal, family: isIP(literal) }]
  else {
    try {
      addresses = await resolve(host)
    } catch {
      throw new UpstreamNotAllowed(`the upstream host does not resolve`)
    }
  }
  if (addresses.length === 0) throw new UpstreamNotAllowed("the upstream host does not resolve")
  for (const a of addresses) {
    if (isDenied(a.address) && !hostAllowed && !allowedBy(list, a.address, port)) {
      throw new UpstreamNotAllowed("the upstream address is not allowed")
    }
  }
  const first = addresses[0]!
  return { address: canonical(first.address)!, family: first.family === 6 ? 6 : 4 }
}
