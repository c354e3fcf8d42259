package natsconf

import (
	"cmp"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/shardflow/shardflow/streams"
)

// Defaults of Config.
const (
	DefaultNodes       = 3
	DefaultClusterName = "shardflow"
	DefaultTLSDir      = "/etc/nats/tls"
	DefaultStoreDir    = "/data/jetstream"
	DefaultListenHost  = "0.0.0.0"
	// DefaultMonitorHost keeps the monitoring endpoint (which shows every
	// connection, subscription and account) off the network: loopback.
	// Set Config.MonitorHost to a private interface to scrape it.
	DefaultMonitorHost = "127.0.0.1"
	ClientPort         = 4222
	ClusterPort        = 6222
	MonitorPort        = 8222
)

// Ports are a server's listening ports. Monitor -1 turns monitoring off.
type Ports struct {
	Client, Cluster, Monitor int
}

// Config describes the configuration to generate.
type Config struct {
	// Shards is the number of shards; it overrides Topology.Shards when set.
	// Default: Topology.Shards (4).
	Shards int
	// Nodes is the number of cluster servers: 3, or a multiple of 3 (a cell
	// of three servers per three nodes). Default 3.
	Nodes int
	// ClusterName names the cluster. Default "shardflow".
	ClusterName string
	// Hosts are the names (or addresses) the servers reach each other and
	// clients reach them at, one per node; they are on the server
	// certificates. Default nats-1 … nats-N (the compose service names).
	Hosts []string
	// ServerNames are the server_name of each node. Default nats-1 … nats-N.
	// A replaced node must get a NEW name (see docs/runbook.md).
	ServerNames []string
	// Ports are each node's ports. Default 4222, 6222, 8222 on every node.
	Ports []Ports
	// SinglePorts are the single-node variant's ports (Cluster unused).
	// Default 4222 and 8222.
	SinglePorts Ports
	// ListenHost is the interface servers listen on. Default 0.0.0.0.
	ListenHost string
	// MonitorHost is the interface of the HTTP monitoring endpoint.
	// Default 127.0.0.1 (see DefaultMonitorHost).
	MonitorHost string
	// SANs are extra names put on every server certificate (a load
	// balancer, the Kubernetes service names).
	SANs []string
	// TLSDir is where the servers find the certificates and keys at run
	// time. Default /etc/nats/tls.
	TLSDir string
	// StoreDir is JetStream's store directory at run time. Default
	// /data/jetstream.
	StoreDir string
	// Topology sizes the permissions and max_payload. Default
	// streams.DefaultTopology().
	Topology streams.Topology
	// Consumers are declared consumers besides the built-in stages (a
	// service team's own, e.g. "auditsink:accounts", see
	// streams.ParseConsumerSpec), added to Topology: each gets a user of
	// its name allowed to pull its durable, and the provisioner may create
	// it. Only shared kinds (accounts, deadletter) are allowed.
	Consumers []streams.ConsumerSpec
	// Keep, when set, updates an existing set instead of making a new one:
	// its NKey seeds and CA are reused, and only what is missing (a new
	// user's seed, a certificate for a new node or user) is created. The
	// configs, manifest and Helm values are always rendered afresh. Use it
	// to grow the topology without rotating any credential.
	Keep *Existing
	// Now and Rand make the certificates reproducible in tests. Default:
	// time.Now() and crypto/rand.
	Now  time.Time
	Rand io.Reader
}

// Existing is the key material of a set generated before (Config.Keep).
type Existing struct {
	Seeds         map[string][]byte // user → NKey seed
	CACert, CAKey []byte            // PEM
	Certs         map[string]bool   // names (servers, users) that have a certificate and key already
}

// LoadExisting reads the key material of a set written by Files.Write
// (dir: the public files, secretsDir: the secret ones). A directory without
// seeds gives nil: there is nothing to keep.
func LoadExisting(dir, secretsDir string) (*Existing, error) {
	secretsDir = cmp.Or(secretsDir, dir)
	seeds, _ := filepath.Glob(filepath.Join(secretsDir, "nkeys", "*.nk"))
	if len(seeds) == 0 {
		return nil, nil
	}
	e := &Existing{Seeds: map[string][]byte{}, Certs: map[string]bool{}}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		e.Seeds[strings.TrimSuffix(filepath.Base(p), ".nk")] = []byte(strings.TrimSpace(string(b)))
	}
	var err error
	if e.CACert, err = os.ReadFile(filepath.Join(dir, filepath.FromSlash(CAFile))); err != nil {
		return nil, fmt.Errorf("natsconf: keep the existing set: %w", err)
	}
	if e.CAKey, err = os.ReadFile(filepath.Join(secretsDir, filepath.FromSlash(CAKeyFile))); err != nil {
		return nil, fmt.Errorf("natsconf: keep the existing set: %w", err)
	}
	certs, _ := filepath.Glob(filepath.Join(dir, "tls", "*.pem"))
	for _, p := range certs {
		name := strings.TrimSuffix(filepath.Base(p), ".pem")
		if name == "ca" || strings.HasSuffix(name, "-key") {
			continue
		}
		if _, err := os.Stat(filepath.Join(secretsDir, filepath.FromSlash(KeyFile(name)))); err == nil {
			e.Certs[name] = true
		}
	}
	return e, nil
}

// File is one generated file. Secret files (NKey seeds, private keys) are
// written with mode 0600 and may go to a separate directory.
type File struct {
	Path   string // slash-separated, relative
	Data   []byte
	Secret bool
}

// Files are the generated files.
type Files []File

// Get returns a file by path.
func (fs Files) Get(p string) (File, bool) {
	for _, f := range fs {
		if f.Path == p {
			return f, true
		}
	}
	return File{}, false
}

// Write writes the public files under dir and the secret ones under
// secretsDir (dir when empty), creating directories as needed.
func (fs Files) Write(dir, secretsDir string) error {
	secretsDir = cmp.Or(secretsDir, dir)
	for _, f := range fs {
		base, mode := dir, os.FileMode(0o644)
		if f.Secret {
			base, mode = secretsDir, 0o600
		}
		p := filepath.Join(base, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.Data, mode); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}

// File names of the generated set.
const (
	AccountsFile   = "accounts.conf"
	SingleFile     = "nats-single.conf"
	HelmValuesFile = "nats-values.yaml"
	ManifestFile   = "manifest.json"
	CAFile         = "tls/ca.pem"
	CAKeyFile      = "tls/ca-key.pem"
)

// NodeFile is the config file of a cluster node.
func NodeFile(serverName string) string { return serverName + ".conf" }

// SeedFile is the NKey seed file of a user.
func SeedFile(user string) string { return "nkeys/" + user + ".nk" }

// CertFile and KeyFile are a server's or a client's certificate and key.
func CertFile(name string) string { return "tls/" + name + ".pem" }

// KeyFile is the private key matching CertFile.
func KeyFile(name string) string { return "tls/" + name + "-key.pem" }

// Manifest describes a generated set, for tools and tests (manifest.json).
type Manifest struct {
	GeneratedBy string          `json:"generated_by"`
	Account     string          `json:"account"`
	Cluster     string          `json:"cluster"`
	Shards      int             `json:"shards"`
	Nodes       int             `json:"nodes"`
	MaxPayload  int             `json:"max_payload"`
	Servers     []ServerInfo    `json:"servers"`
	Single      ServerInfo      `json:"single"`
	Placement   [][]string      `json:"placement"` // per shard
	Users       map[string]User `json:"users"`
	SystemUser  User            `json:"system_user"`
}

// ServerInfo is one server of a Manifest.
type ServerInfo struct {
	Name        string   `json:"name"`
	Host        string   `json:"host"`
	ClientPort  int      `json:"client_port"`
	ClusterPort int      `json:"cluster_port,omitempty"`
	MonitorPort int      `json:"monitor_port"`
	Tags        []string `json:"tags"`
	Config      string   `json:"config"`
	Cert        string   `json:"cert,omitempty"`
	Key         string   `json:"key,omitempty"`
}

// User is one NATS user of a Manifest.
type User struct {
	NKey        string `json:"nkey"`
	SeedFile    string `json:"seed_file"`
	InboxPrefix string `json:"inbox_prefix,omitempty"`
	ClientCert  string `json:"client_cert"`
	ClientKey   string `json:"client_key"`
	Perms
}

type node struct {
	name, host string
	ports      Ports
	tags       []string
}

func (c *Config) normalize() ([]node, error) {
	c.Topology = c.Topology.WithDefaults()
	for _, spec := range c.Consumers {
		if _, dup := c.Topology.Consumer(spec.Name); dup || slices.Contains(Services, spec.Name) || spec.Name == SystemUser {
			return nil, fmt.Errorf("natsconf: consumer %q clashes with a built-in consumer or user", spec.Name)
		}
		if !streams.SharedKind(spec.Kind) {
			return nil, fmt.Errorf("natsconf: consumer %s reads %s: only accounts and deadletter streams take consumers of their own (work-queue streams give each message to one stage)", spec.Name, spec.Kind)
		}
		c.Topology.Consumers = append(c.Topology.Consumers, spec)
	}
	c.Topology = c.Topology.WithDefaults()
	if c.Shards > 0 {
		c.Topology.Shards = c.Shards
	}
	c.Shards = c.Topology.Shards
	if err := c.Topology.Validate(); err != nil {
		return nil, err
	}
	c.Nodes = cmp.Or(c.Nodes, DefaultNodes)
	if c.Nodes < 3 || c.Nodes%3 != 0 {
		return nil, fmt.Errorf("natsconf: Nodes must be 3 or a multiple of 3 (R3 in cells of three servers), got %d", c.Nodes)
	}
	c.ClusterName = cmp.Or(c.ClusterName, DefaultClusterName)
	c.ListenHost = cmp.Or(c.ListenHost, DefaultListenHost)
	c.MonitorHost = cmp.Or(c.MonitorHost, DefaultMonitorHost)
	c.TLSDir = cmp.Or(c.TLSDir, DefaultTLSDir)
	c.StoreDir = cmp.Or(c.StoreDir, DefaultStoreDir)
	c.SinglePorts.Client = cmp.Or(c.SinglePorts.Client, ClientPort)
	c.SinglePorts.Monitor = cmp.Or(c.SinglePorts.Monitor, MonitorPort)
	if c.Now.IsZero() {
		c.Now = time.Now()
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	for what, n := range map[string]int{"Hosts": len(c.Hosts), "ServerNames": len(c.ServerNames), "Ports": len(c.Ports)} {
		if n != 0 && n != c.Nodes {
			return nil, fmt.Errorf("natsconf: %s has %d entries for %d nodes", what, n, c.Nodes)
		}
	}
	nodes := make([]node, c.Nodes)
	seen := map[string]bool{}
	for i := range nodes {
		n := node{name: "nats-" + strconv.Itoa(i+1), ports: Ports{ClientPort, ClusterPort, MonitorPort}, tags: ServerTags(i)}
		if len(c.ServerNames) > 0 {
			n.name = c.ServerNames[i]
		}
		n.host = n.name
		if len(c.Hosts) > 0 {
			n.host = c.Hosts[i]
		}
		if len(c.Ports) > 0 {
			p := c.Ports[i]
			n.ports = Ports{cmp.Or(p.Client, ClientPort), cmp.Or(p.Cluster, ClusterPort), cmp.Or(p.Monitor, MonitorPort)}
		}
		if n.name == "" || strings.ContainsAny(n.name, " /\\\"'") {
			return nil, fmt.Errorf("natsconf: invalid server name %q", n.name)
		}
		if seen[n.name] {
			return nil, fmt.Errorf("natsconf: server name %q used twice", n.name)
		}
		seen[n.name] = true
		nodes[i] = n
	}
	return nodes, nil
}

// Generate produces the whole configuration set for c: the cluster nodes'
// configs, the single-node config, accounts.conf, the Helm values, the
// manifest, fresh NKeys (seeds are secret files) and a self-signed CA with
// a certificate per server and per service.
func Generate(c Config) (Files, error) {
	nodes, err := c.normalize()
	if err != nil {
		return nil, err
	}
	table, err := Table(c.Topology)
	if err != nil {
		return nil, err
	}
	var files Files
	add := func(p string, data []byte, secret bool) {
		files = append(files, File{Path: p, Data: data, Secret: secret})
	}

	// NKeys: one user per service, and the system account's operator.
	users := map[string]User{}
	allUsers := Users(c.Topology)
	keep := c.Keep
	if keep == nil {
		keep = &Existing{}
	}
	for _, name := range append(slices.Clone(allUsers), SystemUser) {
		var kp nkeys.KeyPair
		if seed, ok := keep.Seeds[name]; ok {
			if kp, err = nkeys.FromSeed(seed); err != nil {
				return nil, fmt.Errorf("natsconf: existing seed of %s: %w", name, err)
			}
		} else {
			if kp, err = nkeys.CreateUser(); err != nil {
				return nil, fmt.Errorf("natsconf: nkey for %s: %w", name, err)
			}
			seed, err := kp.Seed()
			if err != nil {
				return nil, err
			}
			add(SeedFile(name), append(seed, '\n'), true)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(pub, "U") {
			return nil, fmt.Errorf("natsconf: the seed of %s is not a user key", name)
		}
		u := User{NKey: pub, SeedFile: SeedFile(name), ClientCert: CertFile(name), ClientKey: KeyFile(name)}
		if name != SystemUser {
			u.InboxPrefix = InboxPrefix(name)
			u.Perms = table[name]
		}
		users[name] = u
	}

	// Certificates.
	var ca *keyPair
	if keep.CACert != nil {
		if ca, err = loadCA(keep.CACert, keep.CAKey); err != nil {
			return nil, err
		}
	} else {
		if ca, err = newCA(c.Rand, c.Now, c.ClusterName); err != nil {
			return nil, err
		}
		add(CAFile, ca.certPEM, false)
		add(CAKeyFile, ca.keyPEM, true)
	}
	for _, n := range nodes {
		if keep.Certs[n.name] {
			continue
		}
		sans := append([]string{n.host}, c.SANs...)
		if n.host != n.name {
			sans = append(sans, n.name)
		}
		kp, err := ca.leaf(c.Rand, c.Now, n.name, dedupe(sans), true)
		if err != nil {
			return nil, err
		}
		add(CertFile(n.name), kp.certPEM, false)
		add(KeyFile(n.name), kp.keyPEM, true)
	}
	for _, name := range append(slices.Clone(allUsers), SystemUser) {
		if keep.Certs[name] {
			continue
		}
		kp, err := ca.leaf(c.Rand, c.Now, name, nil, false)
		if err != nil {
			return nil, err
		}
		add(CertFile(name), kp.certPEM, false)
		add(KeyFile(name), kp.keyPEM, true)
	}

	accounts := renderAccounts(c, users)
	add(AccountsFile, accounts, false)
	for i, n := range nodes {
		add(NodeFile(n.name), renderNode(c, nodes, i), false)
	}
	add(SingleFile, renderSingle(c), false)
	add(HelmValuesFile, renderHelmValues(c, accounts), false)

	m := Manifest{
		GeneratedBy: "sfctl nats-config", Account: AccountName, Cluster: c.ClusterName,
		Shards: c.Shards, Nodes: c.Nodes, MaxPayload: c.Topology.RequiredMaxPayload(),
		Single: ServerInfo{Name: singleName, Host: "127.0.0.1", ClientPort: c.SinglePorts.Client, MonitorPort: c.SinglePorts.Monitor, Tags: ServerTags(0), Config: SingleFile},
		Users:  map[string]User{}, SystemUser: users[SystemUser],
	}
	for _, n := range nodes {
		m.Servers = append(m.Servers, ServerInfo{Name: n.name, Host: n.host, ClientPort: n.ports.Client, ClusterPort: n.ports.Cluster, MonitorPort: n.ports.Monitor,
			Tags: n.tags, Config: NodeFile(n.name), Cert: CertFile(n.name), Key: KeyFile(n.name)})
	}
	place := PlacementTags(c.Nodes)
	for shard := range c.Shards {
		m.Placement = append(m.Placement, place(shard))
	}
	for _, s := range allUsers {
		m.Users[s] = users[s]
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	add(ManifestFile, append(mj, '\n'), false)
	return files, nil
}

// singleName is the single-node variant's server name.
const singleName = "shardflow-single"

func header(c Config, what string) string {
	return fmt.Sprintf(`# %s
# Generated by "sfctl nats-config" for %d shards: do not edit, regenerate
# (and reload the servers: nats-server --signal reload) when the topology
# changes. Subjects and JetStream API permissions are expanded per shard.
`, what, c.Shards)
}

func q(s string) string { return strconv.Quote(s) }

func quoteList(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = q(s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func listen(host string, port int) string { return bracket(host) + ":" + strconv.Itoa(port) }

// bracket brackets an IPv6 literal.
func bracket(host string) string {
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		return "[" + host + "]"
	}
	return host
}

func renderNode(c Config, nodes []node, i int) []byte {
	n := nodes[i]
	var b strings.Builder
	b.WriteString(header(c, fmt.Sprintf("nats-server config of %s, node %d of %d of cluster %q.", n.name, i+1, len(nodes), c.ClusterName)))
	fmt.Fprintf(&b, "\nserver_name: %s\n", q(n.name))
	fmt.Fprintf(&b, "listen: %s\n", q(listen(c.ListenHost, n.ports.Client)))
	if n.ports.Monitor > 0 {
		fmt.Fprintf(&b, "# Monitoring shows every connection and subscription: private address only.\nhttp: %s\n", q(listen(c.MonitorHost, n.ports.Monitor)))
	}
	fmt.Fprintf(&b, "# The one size limit (streams.Topology.RequiredMaxPayload): the largest message\n# of any stream, headers included. Services check it at start-up.\nmax_payload: %d\n", c.Topology.RequiredMaxPayload())
	fmt.Fprintf(&b, "# Placement: streams ask for cell:<n> and sync:always (see manifest.json).\nserver_tags: %s\n", quoteList(n.tags))
	b.WriteString("lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"10s\"\n")
	tlsDir := c.TLSDir
	fmt.Fprintf(&b, `
# Clients: TLS 1.3 with a client certificate from our CA (verify), then NKey auth.
tls {
  cert_file: %s
  key_file: %s
  ca_file: %s
  verify: true
  min_version: "1.3"
  timeout: 2
}

# sync_interval: always — fsync before every acknowledgement (Jepsen, NATS 2.12.1:
# the 2-minute default loses acknowledged writes on power loss).
jetstream {
  store_dir: %s
  sync_interval: always
  # Replicas of one stream go to servers with different az: tags.
  unique_tag: "az:"
}

cluster {
  name: %s
  listen: %s
  routes: [
`, q(path.Join(tlsDir, path.Base(CertFile(n.name)))), q(path.Join(tlsDir, path.Base(KeyFile(n.name)))), q(path.Join(tlsDir, path.Base(CAFile))),
		q(c.StoreDir), q(c.ClusterName), q(listen(c.ListenHost, n.ports.Cluster)))
	for _, o := range nodes {
		// Every server lists every route, itself included (ignored).
		fmt.Fprintf(&b, "    %s\n", q("nats-route://"+bracket(o.host)+":"+strconv.Itoa(o.ports.Cluster)))
	}
	fmt.Fprintf(&b, `  ]
  # Routes always verify the peer; both ends present server certificates.
  tls {
    cert_file: %s
    key_file: %s
    ca_file: %s
    verify: true
    min_version: "1.3"
    timeout: 2
  }
}

system_account: %s
include "./%s"
`, q(path.Join(tlsDir, path.Base(CertFile(n.name)))), q(path.Join(tlsDir, path.Base(KeyFile(n.name)))), q(path.Join(tlsDir, path.Base(CAFile))),
		SystemAccount, AccountsFile)
	return []byte(b.String())
}

func renderSingle(c Config) []byte {
	var b strings.Builder
	b.WriteString(header(c, "nats-server config of a single node: the local stack's shape (streams R1, no TLS, no cluster)."))
	b.WriteString("# For development and tests only: production runs the 3-node cluster configs.\n")
	fmt.Fprintf(&b, "\nserver_name: %s\n", q(singleName))
	fmt.Fprintf(&b, "listen: %s\n", q(listen(c.ListenHost, c.SinglePorts.Client)))
	if c.SinglePorts.Monitor > 0 {
		fmt.Fprintf(&b, "http: %s\n", q(listen(c.MonitorHost, c.SinglePorts.Monitor)))
	}
	fmt.Fprintf(&b, "max_payload: %d\n", c.Topology.RequiredMaxPayload())
	fmt.Fprintf(&b, "# The tags of a cluster node of cell 0, so the same placement works here.\nserver_tags: %s\n", quoteList(ServerTags(0)))
	fmt.Fprintf(&b, `
jetstream {
  store_dir: %s
  sync_interval: always
}

system_account: %s
include "./%s"
`, q(c.StoreDir), SystemAccount, AccountsFile)
	return []byte(b.String())
}

// userComments say what each user is for, in accounts.conf.
var userComments = map[string]string{
	Ingest:      "ingest: publishes inbound.<shard>.<account>.<type> (4 tokens: not the held or deferred copies); watches the directory.",
	Processor:   "processor: pulls INBOUND_<n>/processor; publishes outbound, its dead letters, and held/deferred copies on inbound; watches the directory.",
	Sender:      "sender: pulls OUTBOUND_<n>/sender; publishes its dead letters and held/deferred copies on outbound; watches the directory.",
	Accounts:    "accounts: lifecycle events, the directory's writer, the deletion saga — the ONLY user that may purge; releases held messages and replays dead letters.",
	DeadLetter:  "deadletter: pulls DEADLETTER_<n>/indexer; max-deliveries advisories; get/delete by sequence on the stage streams; writes dead letters.",
	Provisioner: "provisioner (sfctl provision): creates/updates the topology's streams, consumers and the directory bucket. Cannot delete or purge, reads no messages.",
}

func renderAccounts(c Config, users map[string]User) []byte {
	var b strings.Builder
	b.WriteString(header(c, "Accounts and users of shardflow: public NKeys only (seeds: nkeys/<user>.nk)."))
	b.WriteString(`# Least privilege (docs/runbook.md, anchors/reliability.md §3): each service has
# its own user with exactly the subjects and JetStream API calls its code
# makes; everyone's publish deny list holds $JS.API.STREAM.DELETE.> (deny wins).
# Each service subscribes only to its own inbox prefix (_INBOX_<service>.>).
# A refused publish only times out on the client: the connection's error
# handler sees the violation (shardflow_nats_permission_violations_total).
# There is no no_auth_user.

accounts {
`)
	fmt.Fprintf(&b, "  %s {\n    users: [\n      # %s: operators' user for `nats server ...` (raft peer-remove, reports).\n      { nkey: %s }\n    ]\n  }\n\n",
		SystemAccount, SystemUser, users[SystemUser].NKey)
	fmt.Fprintf(&b, "  %s {\n    jetstream: enabled\n    users: [\n", AccountName)
	for i, s := range Users(c.Topology) {
		u := users[s]
		if i > 0 {
			b.WriteString("\n")
		}
		comment, ok := userComments[s]
		if !ok {
			spec, _ := c.Topology.Consumer(s)
			comment = fmt.Sprintf("%s: a declared consumer; pulls its own durable on %s streams, writes its dead letters. No directory, no consumer creation (the provisioner declares it).", s, spec.Kind)
		}
		fmt.Fprintf(&b, "      # %s\n", comment)
		fmt.Fprintf(&b, "      {\n        nkey: %s\n        permissions: {\n", u.NKey)
		b.WriteString("          publish: {\n")
		writeList(&b, "allow", u.PublishAllow, 12)
		writeList(&b, "deny", u.PublishDeny, 12)
		b.WriteString("          }\n          subscribe: {\n")
		writeList(&b, "allow", u.SubscribeAllow, 12)
		b.WriteString("          }\n        }\n      }\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	return []byte(b.String())
}

func writeList(b *strings.Builder, key string, items []string, indent int) {
	pad := strings.Repeat(" ", indent)
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, "%s%s: [\n", pad, key)
	for _, s := range items {
		fmt.Fprintf(b, "%s  %s\n", pad, q(s))
	}
	fmt.Fprintf(b, "%s]\n", pad)
}

func renderHelmValues(c Config, accounts []byte) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `# Values for the official NATS Helm chart (https://nats-io.github.io/k8s/helm/charts/, chart 1.x):
#   helm upgrade --install shardflow-nats nats/nats -n shardflow -f deploy/k8s/nats-values.yaml
# Generated by "sfctl nats-config" for %d shards from the same accounts.conf as
# deploy/nats: regenerate both together. The TLS secret is not generated here:
#   kubectl -n shardflow create secret generic shardflow-nats-server-tls \
#     --from-file=tls.crt=<server cert> --from-file=tls.key=<server key> --from-file=ca.crt=<ca>
# (cert-manager in production; its certificate needs the SANs *.shardflow-nats-headless
# and shardflow-nats, see the chart's TLS notes). Placement tags: every pod is in
# cell 0 (a 3-node cluster); spread the pods over zones with the constraint below.
# The fixed name makes the client service "shardflow-nats" (SHARDFLOW_NATS_URL in
# deploy/k8s) whatever the release is called.
fullnameOverride: shardflow-nats
config:
  cluster:
    enabled: true
    replicas: %d
    name: %s
    tls:
      enabled: true
      secretName: shardflow-nats-server-tls
      ca: ca.crt
      merge:
        min_version: "1.3"
  nats:
    tls:
      enabled: true
      secretName: shardflow-nats-server-tls
      # With a CA the chart sets ca_file and verify: true (client certificates).
      ca: ca.crt
      merge:
        min_version: "1.3"
        timeout: 2
  jetstream:
    enabled: true
    fileStore:
      enabled: true
      dir: /data
      pvc:
        enabled: true
        size: 50Gi
    memoryStore:
      enabled: false
    merge:
      # fsync before every acknowledgement (anchors/reliability.md §1).
      sync_interval: always
  monitor:
    enabled: true
    port: 8222
  merge:
    max_payload: %d
    server_tags: %s
    system_account: %s
    00$include: shardflow-accounts.conf
configMap:
  merge:
    data:
      shardflow-accounts.conf: |
`, c.Shards, c.Nodes, c.ClusterName, c.Topology.RequiredMaxPayload(), quoteList([]string{"cell:0", "sync:always"}), SystemAccount)
	for _, line := range strings.Split(strings.TrimRight(string(accounts), "\n"), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString("        " + line + "\n")
	}
	b.WriteString(`container:
  image:
    tag: "2.15-alpine"
  env:
    # ~90% of the memory limit
    GOMEMLIMIT: 3600MiB
  merge:
    resources:
      requests:
        cpu: "1"
        memory: 4Gi
      limits:
        memory: 4Gi
podTemplate:
  topologySpreadConstraints:
    topology.kubernetes.io/zone:
      maxSkew: 1
      whenUnsatisfiable: DoNotSchedule
    kubernetes.io/hostname:
      maxSkew: 1
      whenUnsatisfiable: DoNotSchedule
podDisruptionBudget:
  enabled: true
natsBox:
  # Operators use their own nats CLI with the sys or provisioner NKey.
  enabled: false
`)
	return []byte(b.String())
}

func dedupe(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// ErrExists is returned by CheckOverwrite when a directory already holds
// NKey seeds: regenerating replaces every key, which every service and
// server must then be given at once.
var ErrExists = errors.New("natsconf: generated secrets already exist")

// CheckOverwrite returns ErrExists when secretsDir already holds seeds.
func CheckOverwrite(secretsDir string) error {
	m, _ := filepath.Glob(filepath.Join(secretsDir, "nkeys", "*.nk"))
	if len(m) > 0 {
		return fmt.Errorf("%w in %s (%d seeds); pass --force to replace every key and certificate", ErrExists, secretsDir, len(m))
	}
	return nil
}
