package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shardflow/shardflow/services/internal/natsconf"
	"github.com/shardflow/shardflow/streams"
)

// NATSConfCmd is `sfctl nats-config`: generate the NATS cluster's
// configuration for the topology the global flags describe (--shards,
// --max-event-bytes): a config per node of a 3-node cluster, a single-node
// variant, accounts.conf with one least-privilege NKey user per service,
// the Helm values, manifest.json, fresh NKey seeds and a self-signed CA
// with server and client certificates (production replaces the
// certificates; see docs/runbook.md).
type NATSConfCmd struct {
	Out         string   `name:"out" default:"deploy/nats/generated" help:"Directory for the configs, public certificates, Helm values and manifest."`
	SecretsOut  string   `name:"secrets-out" help:"Directory for the NKey seeds and private keys (default: --out)."`
	HelmValues  string   `name:"helm-values" help:"Where to write the Helm values (default: <out>/nats-values.yaml)."`
	Force       bool     `name:"force" help:"Replace existing seeds and keys (every server and service must then get the new ones)."`
	Update      bool     `name:"update" xor:"replace" help:"Keep the existing seeds, CA and certificates in --out/--secrets-out; create only what is missing (a new consumer's user, a new node's certificate) and render the configs afresh (a new shard count, say)."`
	Nodes       int      `name:"nodes" default:"3" help:"Cluster servers: 3 or a multiple of 3."`
	ClusterName string   `name:"cluster-name" default:"shardflow" help:"Cluster name."`
	Hosts       []string `name:"host" help:"Host name of each node, in order (default nats-1..nats-N)."`
	ServerNames []string `name:"server-name" help:"server_name of each node, in order (default nats-1..nats-N)."`
	NodePorts   []string `name:"node-ports" help:"client:cluster:monitor ports of each node, in order (default 4222:6222:8222)."`
	SinglePorts string   `name:"single-ports" default:"4222:8222" help:"client:monitor ports of the single-node config."`
	ListenHost  string   `name:"listen-host" default:"0.0.0.0" help:"Interface the servers listen on."`
	MonitorHost string   `name:"monitor-host" default:"127.0.0.1" help:"Interface of the HTTP monitoring endpoint (keep it private)."`
	SANs        []string `name:"san" help:"Extra names on the server certificates (load balancer, Kubernetes services)."`
	TLSDir      string   `name:"tls-dir" default:"/etc/nats/tls" help:"Where the servers find certificates and keys at run time."`
	StoreDir    string   `name:"store-dir" default:"/data/jetstream" help:"JetStream store directory at run time."`
	Consumers   []string `name:"consumer" help:"A declared consumer of its own (name:kind[:max_deliver=N...], kind accounts or deadletter), e.g. auditsink:accounts: it gets a user, the provisioner may create it."`
}

// Run generates and writes the files.
func (c *NATSConfCmd) Run(a *app) error {
	cfg := natsconf.Config{
		Topology: a.cli.Topology(), Nodes: c.Nodes, ClusterName: c.ClusterName,
		Hosts: c.Hosts, ServerNames: c.ServerNames, ListenHost: c.ListenHost, MonitorHost: c.MonitorHost,
		SANs: c.SANs, TLSDir: c.TLSDir, StoreDir: c.StoreDir,
	}
	for _, s := range c.Consumers {
		spec, err := streams.ParseConsumerSpec(s)
		if err != nil {
			return fmt.Errorf("--consumer: %w", err)
		}
		cfg.Consumers = append(cfg.Consumers, spec)
	}
	for _, s := range c.NodePorts {
		p, err := parsePorts(s, 3)
		if err != nil {
			return fmt.Errorf("--node-ports %q: %w", s, err)
		}
		cfg.Ports = append(cfg.Ports, natsconf.Ports{Client: p[0], Cluster: p[1], Monitor: p[2]})
	}
	p, err := parsePorts(c.SinglePorts, 2)
	if err != nil {
		return fmt.Errorf("--single-ports %q: %w", c.SinglePorts, err)
	}
	cfg.SinglePorts = natsconf.Ports{Client: p[0], Monitor: p[1]}
	secrets := c.SecretsOut
	if secrets == "" {
		secrets = c.Out
	}
	switch {
	case c.Update:
		if cfg.Keep, err = natsconf.LoadExisting(c.Out, secrets); err != nil {
			return err
		}
		if cfg.Keep == nil {
			return fmt.Errorf("--update: no generated set in %s (no seeds in %s)", c.Out, filepath.Join(secrets, "nkeys"))
		}
	case !c.Force:
		if err := natsconf.CheckOverwrite(secrets); err != nil {
			return err
		}
	}
	files, err := natsconf.Generate(cfg)
	if err != nil {
		return err
	}
	if c.HelmValues != "" {
		var rest natsconf.Files
		for _, f := range files {
			if f.Path == natsconf.HelmValuesFile {
				if err := os.MkdirAll(filepath.Dir(c.HelmValues), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(c.HelmValues, f.Data, 0o644); err != nil {
					return err
				}
				continue
			}
			rest = append(rest, f)
		}
		files = rest
	}
	if err := files.Write(c.Out, secrets); err != nil {
		return err
	}
	nSecret := 0
	for _, f := range files {
		if f.Secret {
			nSecret++
		}
	}
	fmt.Fprintf(a.out, "NATS config for %d shards (%d nodes, cluster %q): %d files in %s, %d secrets (NKey seeds, private keys) in %s\n",
		cfg.Topology.Shards, c.Nodes, c.ClusterName, len(files)-nSecret, c.Out, nSecret, secrets)
	if c.HelmValues != "" {
		fmt.Fprintf(a.out, "Helm values: %s\n", c.HelmValues)
	}
	if c.Update {
		fmt.Fprintf(a.out, "Kept the existing seeds and certificates; %d new secrets. Reload the servers (nats-server --signal reload) before provisioning.\n", nSecret)
	} else {
		fmt.Fprintln(a.out, "The CA and certificates are self-signed examples: production replaces them (same file names).")
	}
	return nil
}

// parsePorts parses n colon-separated ports (-1 allowed: monitoring off).
func parsePorts(s string, n int) ([]int, error) {
	parts := strings.Split(s, ":")
	if len(parts) != n {
		return nil, fmt.Errorf("want %d colon-separated ports", n)
	}
	out := make([]int, n)
	for i, p := range parts {
		v, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || v < -1 || v > 65535 || v == 0 {
			return nil, fmt.Errorf("%q is not a port", p)
		}
		out[i] = v
	}
	return out, nil
}
