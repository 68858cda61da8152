package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// envPrefix prefixes the environment variable of every flag.
const envPrefix = "BUILDLOG_"

type config struct {
	grpcAddr        string
	httpAddr        string
	endpoint        string // from --upstream or --region
	chunkSize       int
	shutdownTimeout time.Duration
	headerTimeout   time.Duration
	idleTimeout     time.Duration
	connectTimeout  time.Duration
	attempts        int
	maxResumes      int
	maxDownloads    int
	maxConnStreams  int
	demo            bool
	obs             obsConfig     // admin endpoints, logs, keepalive (observability.go)
	security        securityFlags // see security.go
}

// parseConfig reads flags, then BUILDLOG_<FLAG> variables for flags not
// given, and checks the result.
func parseConfig(args []string, getenv func(string) (string, bool), stderr io.Writer) (*config, error) {
	var (
		cfg         config
		upstreamURL string
		region      string
		chunk       = byteSize(service.DefaultChunkSize)
	)
	fs := flag.NewFlagSet("buildlogd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.grpcAddr, "grpc-addr", server.DefaultGRPCAddr, "listen `address` of the gRPC service")
	fs.StringVar(&cfg.httpAddr, "http-addr", server.DefaultHTTPAddr, "listen `address` of the REST mirror")
	fs.StringVar(&upstreamURL, "upstream", "", "upstream API endpoint `URL` (https://, or http:// for loopback and mesh sidecars); overrides --region")
	fs.StringVar(&region, "region", "", "Huawei Cloud `region` whose CodeArts Build endpoint to use (default "+upstream.DefaultRegion+")")
	fs.Var(&chunk, "chunk-size", fmt.Sprintf("largest data `size` of one stream message, in bytes or with a KiB/MiB suffix, %s to %s",
		byteSize(service.MinChunkSize), byteSize(service.MaxChunkSize)))
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", server.DefaultShutdownTimeout, "how long in-flight downloads may finish after SIGTERM before they are cancelled")
	fs.DurationVar(&cfg.headerTimeout, "upstream-header-timeout", upstream.DefaultHeaderTimeout, "how long to wait for the upstream's response headers")
	fs.DurationVar(&cfg.idleTimeout, "upstream-idle-timeout", upstream.DefaultIdleTimeout, "how long a download may wait for the upstream's next bytes before it fails")
	fs.DurationVar(&cfg.connectTimeout, "upstream-connect-timeout", upstream.DefaultConnectTimeout, "how long opening a connection to the upstream may take, TLS handshake included")
	fs.IntVar(&cfg.attempts, "upstream-attempts", upstream.DefaultRetryPolicy.Attempts, "how many times a failing upstream request is tried (502/503/504, network busy, connection errors), the first included; 1 turns retries and resumption off")
	fs.IntVar(&cfg.maxResumes, "upstream-max-resumes", upstream.DefaultRetryPolicy.MaxResumes, "how many times one download may resume after the upstream's body broke off")
	fs.IntVar(&cfg.maxDownloads, "max-downloads", server.DefaultMaxDownloads, "most downloads in flight, gRPC and REST together; beyond it calls fail at once with RESOURCE_EXHAUSTED (HTTP 429)")
	fs.IntVar(&cfg.maxConnStreams, "max-streams-per-connection", server.DefaultMaxStreamsPerConnection, "most calls one client connection may have open at once (HTTP/2 streams), on both listeners; further calls wait for one of its own to end")
	addObsFlags(fs, &cfg.obs)
	cfg.security.register(fs)
	fs.BoolVar(&cfg.demo, "demo", false, "run a simulated upstream in-process with sample records and print commands to try (no cloud account needed)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: buildlogd [flags]\n\n"+
			"Serves buildlog.v1.BuildLogService (gRPC) and a REST mirror of\n"+
			"GET /v4/{record_id}/task-log, relaying CodeArts Build action logs.\n"+
			"Every flag can also be set as %s<FLAG> (such as %sGRPC_ADDR).\n\nFlags:\n", envPrefix, envPrefix)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (all settings are flags; see --help)", fs.Arg(0))
	}
	if err := applyEnv(fs, getenv); err != nil {
		return nil, err
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.demo && (set["upstream"] || set["region"]) {
		return nil, errors.New("--demo runs its own upstream: drop --upstream and --region (or BUILDLOG_UPSTREAM and BUILDLOG_REGION)")
	}
	if set["upstream"] && set["region"] {
		return nil, errors.New("give --upstream or --region, not both (nor both BUILDLOG_UPSTREAM and BUILDLOG_REGION)")
	}
	switch {
	case cfg.demo:
	case upstreamURL != "":
		cfg.endpoint = upstreamURL
	default:
		endpoint, err := regionEndpoint(region)
		if err != nil {
			return nil, fmt.Errorf("--region: %w", err)
		}
		cfg.endpoint = endpoint
		if cfg.security.iamUser != "" && cfg.security.iamEndpoint == "" {
			cfg.security.iamEndpoint = upstream.IAMRegionEndpoint(cmp.Or(region, upstream.DefaultRegion))
		}
	}
	cfg.chunkSize = int(chunk)
	if cfg.chunkSize < service.MinChunkSize || cfg.chunkSize > service.MaxChunkSize {
		return nil, fmt.Errorf("--chunk-size %s is out of range: use %s to %s", chunk, byteSize(service.MinChunkSize), byteSize(service.MaxChunkSize))
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"shutdown-timeout", cfg.shutdownTimeout}, {"upstream-header-timeout", cfg.headerTimeout},
		{"upstream-idle-timeout", cfg.idleTimeout}, {"upstream-connect-timeout", cfg.connectTimeout},
	} {
		if d.value <= 0 {
			return nil, fmt.Errorf("--%s must be positive, got %s", d.name, d.value)
		}
	}
	for _, n := range []struct {
		name     string
		value    int
		min, max int
	}{{"upstream-attempts", cfg.attempts, 1, 10}, {"upstream-max-resumes", cfg.maxResumes, 0, 1000}, {"max-downloads", cfg.maxDownloads, 1, 1 << 20}, {"max-streams-per-connection", cfg.maxConnStreams, 1, 1 << 20}} {
		if n.value < n.min || n.value > n.max {
			return nil, fmt.Errorf("--%s %d is out of range: use %d to %d", n.name, n.value, n.min, n.max)
		}
	}
	if err := cfg.security.check(); err != nil {
		return nil, err
	}
	if err := cfg.obs.check(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// upstreamFlags choose the upstream; only one may be given. A choice made on
// the command line overrides the environment's for the whole group, so
// --upstream wins over BUILDLOG_REGION as it does over BUILDLOG_UPSTREAM.
var upstreamFlags = []string{"upstream", "region", "demo"}

// applyEnv sets each flag not given on the command line from its
// BUILDLOG_<FLAG> variable, when that is set.
func applyEnv(fs *flag.FlagSet, getenv func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	upstreamGiven := slices.ContainsFunc(upstreamFlags, func(name string) bool { return given[name] })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v, ok := getenv(name)
		if !ok || given[f.Name] || err != nil || (upstreamGiven && slices.Contains(upstreamFlags, f.Name)) {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("%s=%q: %w", name, v, serr)
		}
	})
	return err
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func regionEndpoint(region string) (string, error) {
	if region == "" {
		region = upstream.DefaultRegion
	}
	return upstream.RegionEndpoint(region)
}

// byteSize is a flag value in bytes that accepts KiB and MiB suffixes.
type byteSize int

func (b byteSize) String() string {
	switch {
	case b >= 1<<20 && b%(1<<20) == 0:
		return strconv.Itoa(int(b)>>20) + "MiB"
	case b >= 1<<10 && b%(1<<10) == 0:
		return strconv.Itoa(int(b)>>10) + "KiB"
	}
	return strconv.Itoa(int(b))
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), 1
	for suffix, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20} {
		if n, ok := strings.CutSuffix(num, suffix); ok {
			num, mult = strings.TrimSpace(n), m
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > (1<<30)/mult {
		return fmt.Errorf("want a byte count such as 65536 or 64KiB, got %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}
