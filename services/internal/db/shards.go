package db

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// EnvShardDSNs is the environment variable giving shards databases of their
// own (--shard-database-urls).
const EnvShardDSNs = "SHARDFLOW_SHARD_DATABASE_URLS"

// MainTables live in the main database (SHARDFLOW_DATABASE_URL) whatever the
// shard configuration; ShardTables live in the database of the account's
// shard. Every database gets every migration; the tables a database does not
// use stay empty.
var (
	MainTables  = []string{"accounts", "account_deletions", "account_tombstones", "dead_letters"}
	ShardTables = []string{"people", "triggers", "deliveries"}
)

// ShardDSNs says which database holds each shard's rows (ShardTables): the
// shards listed in SHARDFLOW_SHARD_DATABASE_URLS have their own DSN, every
// other shard uses the main one. The zero value is not usable; build it with
// ParseShardDSNs.
type ShardDSNs struct {
	main    string
	byShard map[int]string
}

// ParseShardDSNs parses spec, "N=DSN" entries separated by ';' (a DSN may
// hold commas, e.g. several hosts), for a topology of shards shards:
//
//	0=postgres://pg-a/shard0;2=postgres://pg-b/shard2
//
// Shards not listed use main. An empty spec (the default) puts every shard
// in main. Empty entries (a trailing ';') are ignored. An entry that is not
// N=DSN, a shard outside 0..shards-1, a shard listed twice or a DSN that
// does not parse is an error naming the entry (its password redacted) and
// the rule it breaks.
func ParseShardDSNs(spec, main string, shards int) (ShardDSNs, error) {
	d := ShardDSNs{main: main, byShard: map[int]string{}}
	entryOf := map[int]int{} // shard → entry number, for "listed twice"
	for i, entry := range strings.Split(spec, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		n, dsn, err := parseShardEntry(entry, shards)
		if err != nil {
			return ShardDSNs{}, fmt.Errorf("%s: entry %d %q: %w", EnvShardDSNs, i+1, redact(entry), err)
		}
		if first, dup := entryOf[n]; dup {
			return ShardDSNs{}, fmt.Errorf("%s: entry %d %q: shard %d is already given a database by entry %d; list each shard once",
				EnvShardDSNs, i+1, redact(entry), n, first)
		}
		entryOf[n] = i + 1
		d.byShard[n] = dsn
	}
	return d, nil
}

// parseShardEntry parses one "N=DSN" entry.
func parseShardEntry(entry string, shards int) (int, string, error) {
	num, dsn, ok := strings.Cut(entry, "=")
	num, dsn = strings.TrimSpace(num), strings.TrimSpace(dsn)
	if !ok || num == "" || dsn == "" {
		return 0, "", fmt.Errorf("want N=DSN, a shard number, '=' and a PostgreSQL DSN (entries are separated by ';')")
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return 0, "", fmt.Errorf("want N=DSN: %q before '=' is not a shard number", num)
	}
	if n < 0 || n >= shards {
		return 0, "", fmt.Errorf("shard %d is not in the topology's shards 0..%d", n, shards-1)
	}
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return 0, "", fmt.Errorf("the DSN of shard %d does not parse: %w", n, err)
	}
	return n, dsn, nil
}

// For returns the DSN of the database holding shard's rows.
func (d ShardDSNs) For(shard int) string {
	if dsn, ok := d.byShard[shard]; ok {
		return dsn
	}
	return d.main
}

// Main returns the main database's DSN.
func (d ShardDSNs) Main() string { return d.main }

// Own reports whether shard's rows are in a database other than the main one.
func (d ShardDSNs) Own(shard int) bool { return d.For(shard) != d.main }

// Distinct returns the distinct DSNs of shards, in the order of shards: each
// database to migrate once.
func (d ShardDSNs) Distinct(shards []int) []string {
	var out []string
	for _, n := range shards {
		if dsn := d.For(n); !slices.Contains(out, dsn) {
			out = append(out, dsn)
		}
	}
	return out
}

var (
	quotedPassword = regexp.MustCompile(`password='[^']*'`)
	plainPassword  = regexp.MustCompile(`password=[^ ]*`)
	urlPassword    = regexp.MustCompile(`://([^:@/]*):[^@/]*@`)
)

// redact hides the passwords of a DSN or of a configuration entry holding
// one (a URL's user password, a key/value password), for error messages.
func redact(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		start := strings.LastIndexAny(s[:i], "=; ") + 1 // "0=postgres://…": the URL starts after '='
		if u, err := url.Parse(s[start:]); err == nil {
			return s[:start] + u.Redacted()
		}
		s = urlPassword.ReplaceAllString(s, "://$1:xxxxx@")
	}
	s = quotedPassword.ReplaceAllLiteralString(s, "password=xxxxx")
	return plainPassword.ReplaceAllLiteralString(s, "password=xxxxx")
}

// Describe names a DSN's database and server ("shard0 at pg-a:5432") for
// logs, without its credentials.
func Describe(dsn string) string {
	c, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return redact(dsn)
	}
	return fmt.Sprintf("%s at %s", c.Database, Addr(*c))
}
