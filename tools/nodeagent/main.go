// Command nodeagent stands in for a kubelet plus container runtime on a test
// machine that has neither: it registers a Node, runs the pods bound to it as
// local processes in their own network namespaces, and serves the kubelet API
// (logs, exec, port-forward) so the API server can reach them. It can also be
// the kubelet of Nodes another program creates (Karpenter's kwok provider).
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// multiFlag collects repeatable flags such as --image and --env.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

const usage = `usage:
  nodeagent run --kubeconfig FILE --node-name NAME --port PORT --tls-cert FILE --tls-key FILE \
     --state-dir DIR [--image PREFIX=BINDIR]... [--env KEY=VALUE]... \
     [--pull-rate RATE] [--image-size PREFIX=SIZE]... [--default-image-size SIZE] [--pull-backoff DURATION] \
     [--serve-provider-id-prefix PREFIX]
  nodeagent cleanup --state-dir DIR
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "cleanup":
		fs := flag.NewFlagSet("cleanup", flag.ExitOnError)
		stateDir := fs.String("state-dir", "", "directory the agent recorded its network objects in")
		fs.Parse(os.Args[2:])
		if *stateDir == "" {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		err = cleanupState(*stateDir)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nodeagent: %v\n", err)
		os.Exit(1)
	}
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var cfg agentConfig
	var images, envs, sizes multiFlag
	var pullRate, defaultSize string
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to join")
	fs.StringVar(&cfg.nodeName, "node-name", "", "name of the Node to register")
	fs.IntVar(&cfg.port, "port", 0, "port of the kubelet API on 127.0.0.1")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "serving certificate of the kubelet API")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "key of the serving certificate")
	fs.StringVar(&cfg.stateDir, "state-dir", "", "directory for pod dirs, logs and network records")
	fs.Var(&images, "image", "PREFIX=BINDIR: run images whose repository starts with PREFIX with BINDIR first on PATH (repeatable)")
	fs.Var(&envs, "env", "KEY=VALUE added to every container's environment (repeatable)")
	fs.StringVar(&cfg.serveProviderIDPrefix, "serve-provider-id-prefix", "",
		"also be the kubelet of every Node whose spec.providerID starts with PREFIX (Karpenter's kwok provider: kwok://), for as long as it exists")
	fs.StringVar(&pullRate, "pull-rate", "0", "how fast images are pulled, e.g. 2GB/s; 0: at once")
	fs.Var(&sizes, "image-size", "PREFIX=SIZE: images whose reference (repository:tag) starts with PREFIX are SIZE big, e.g. rayproject/ray-llm=11GB; the longest prefix wins (repeatable)")
	fs.StringVar(&defaultSize, "default-image-size", "0", "size of an image no --image-size matches")
	pullBackoff := fs.Duration("pull-backoff", defaultPullBackoff, "back-off after a failed pull, doubled each time up to 30 times this (the kubelet: 10s, up to 300s)")
	fs.Parse(args)
	if cfg.kubeconfig == "" || cfg.nodeName == "" || cfg.port == 0 || cfg.tlsCert == "" || cfg.tlsKey == "" || cfg.stateDir == "" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	for _, s := range images {
		prefix, dir, ok := strings.Cut(s, "=")
		if !ok || prefix == "" || dir == "" {
			return fmt.Errorf("--image %q: want PREFIX=BINDIR", s)
		}
		cfg.images = append(cfg.images, imageRule{prefix: prefix, binDir: dir})
	}
	for _, s := range envs {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("--env %q: want KEY=VALUE", s)
		}
		cfg.extraEnv = append(cfg.extraEnv, s)
	}
	var err error
	if cfg.pulls, err = parsePullFlags(pullRate, defaultSize, sizes, *pullBackoff); err != nil {
		return err
	}
	return runAgent(cfg)
}
