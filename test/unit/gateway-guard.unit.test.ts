// The SSRF guard's address rules, in every spelling an attacker might use (pure logic: no
// connection is made; a resolver stands in for DNS).
import { describe, expect, it } from "vitest"
import { checkUpstream, isDenied, parseAllowlist, UpstreamNotAllowed } from "../../services/gateway/upstream-guard.ts"

const none = parseAllowlist(undefined)
const refused = (url: string, list = none, resolve?: (h: string) => Promise<Array<{ address: string; family: number }>>) =>
  expect(checkUpstream(new URL(url), list, resolve)).rejects.toBeInstanceOf(UpstreamNotAllowed)

describe("the upstream address guard", () => {
  it("refuses metadata, loopback, private and unspecified addresses in every notation", async () => {
    for (const url of [
      "http://169.254.169.254/latest/meta-data",
      "http://[::ffff:a9fe:a9fe]/",
      "http://[::ffff:169.254.169.254]/",
      "http://2852039166/",
      "http://0xa9.0xfe.0xa9.0xfe/",
      "http://0.0.0.0:8080/",
      "http://0/",
      "http://[::1]:8080/",
      "http://[::]/",
      "http://0177.0.0.1:8080/",
      "http://127.1/",
      "http://10.0.0.1/",
      "http://172.16.5.4/",
      "http://192.168.1.1/",
      "http://100.64.0.1/",
      "http://[fd00:ec2::254]/",
      "http://[fe80::1]/",
      "http://[64:ff9b::7f00:1]/",
      "http://224.0.0.1/"
    ]) await refused(url)
  })

  it("refuses a name that resolves to loopback, or to any private address among public ones", async () => {
    await refused("http://localhost:8080/")
    await refused("http://evil.example/", none, async () => [{ address: "127.0.0.1", family: 4 }])
    await refused("http://mixed.example/", none, async () => [{ address: "93.184.216.34", family: 4 }, { address: "10.1.2.3", family: 4 }])
    await refused("http://nowhere.invalid/", none, async () => { throw new Error("ENOTFOUND") })
    await refused("ftp://93.184.216.34/")
  })

  it("allows public addresses, and dials the address it checked", async () => {
    expect(await checkUpstream(new URL("http://93.184.216.34/"), none)).toEqual({ address: "93.184.216.34", family: 4 })
    expect(await checkUpstream(new URL("https://api.example/"), none, async () => [{ address: "2606:2800:220:1::1", family: 6 }]))
      .toEqual({ address: "2606:2800:220:1::1", family: 6 })
    expect(isDenied("8.8.8.8")).toBe(false)
    expect(isDenied("::ffff:8.8.8.8")).toBe(false)
  })

  it("UPSTREAM_ALLOWLIST permits CIDRs and exact host:port entries, nothing more", async () => {
    const list = parseAllowlist("10.1.0.0/16, 127.0.0.1:9000, localhost:9100, [::1]:9200")
    expect((await checkUpstream(new URL("http://10.1.2.3/"), list)).address).toBe("10.1.2.3")
    await refused("http://10.2.0.1/", list)
    expect((await checkUpstream(new URL("http://127.0.0.1:9000/"), list)).address).toBe("127.0.0.1")
    await refused("http://127.0.0.1:9001/", list)
    await refused("http://0177.0.0.1:9001/", list)
    expect((await checkUpstream(new URL("http://localhost:9100/"), list, async () => [{ address: "127.0.0.1", family: 4 }])).address).toBe("127.0.0.1")
    expect((await checkUpstream(new URL("http://[::1]:9200/"), list)).address).toBe("::1")
    await refused("http://[::1]:9000/", list)
    expect(() => parseAllowlist("10.0.0.0/99")).toThrow()
    expect(() => parseAllowlist("not an entry")).toThrow()
  })
})
