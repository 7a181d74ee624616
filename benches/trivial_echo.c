/* trivial_echo: the smallest stdio MCP child the benchmark can use, for the
 * rows where the child's own start-up or memory would hide the proxy's
 * (session set-up with a trivial child, the 100/1,000 idle-session memory
 * rows, and the max-live-sessions and recovery rows, where thousands of
 * them run at once). benches/proxy.rs compiles it with `cc -O2`.
 *
 * One line in, at most one line out. It does not parse JSON: it finds the
 * top-level "id" by text, answers `initialize` with a minimal
 * InitializeResult, `tools/list` with one tool, any other request with an
 * echo-shaped tools/call result, and stays silent for notifications. Good
 * enough for well-formed traffic from the benchmark and the proxies under
 * test; not an MCP server for anything else.
 */
#include <stdio.h>
#include <string.h>

static char line[1 << 20];

/* Copies the raw JSON text of the value after `"id":` into out. */
static int find_id(const char *s, char *out, size_t cap) {
    const char *p = strstr(s, "\"id\"");
    if (!p) return 0;
    p += 4;
    while (*p == ' ' || *p == ':') p++;
    const char *start = p;
    if (*p == '"') {
        p++;
        while (*p && *p != '"') p += (*p == '\\' && p[1]) ? 2 : 1;
        if (*p == '"') p++;
    } else {
        while (*p && *p != ',' && *p != '}' && *p != ' ') p++;
    }
    size_t n = (size_t)(p - start);
    if (n == 0 || n >= cap || strncmp(start, "null", 4) == 0) return 0;
    memcpy(out, start, n);
    out[n] = 0;
    return 1;
}

int main(void) {
    char id[256];
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    while (fgets(line, sizeof line, stdin)) {
        if (!strstr(line, "\"method\"") || !find_id(line, id, sizeof id)) continue;
        if (strstr(line, "\"initialize\"")) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"protocolVersion\":\"2025-06-18\","
                   "\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"trivial-echo\",\"version\":\"0\"}}}\n",
                   id);
        } else if (strstr(line, "\"tools/list\"")) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"tools\":[{\"name\":\"echo\","
                   "\"inputSchema\":{\"type\":\"object\"}}]}}\n",
                   id);
        } else if (strstr(line, "\"tools/call\"")) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],"
                   "\"isError\":false}}\n",
                   id);
        } else {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{}}\n", id);
        }
        fflush(stdout);
    }
    return 0;
}
