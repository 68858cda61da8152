package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// envPrefix prefixes the environment variable of every flag.
const envPrefix = "BUILDLOG_"

// config is what the command line and environment set. The flags write to
// server's Config, whose defaults (server.DefaultConfig) are theirs, and
// whose settings server.New checks.
type config struct {
	server    server.Config
	demo      bool
	logFormat string
	logLevel  slog.Level
	security  securityFlags // see security.go
}

// parseConfig reads flags, then BUILDLOG_<FLAG> variables for flags not
// given, and checks what only they can: the combinations of flags.
func parseConfig(args []string, getenv func(string) (string, bool), stderr io.Writer) (*config, error) {
	cfg := config{server: server.DefaultConfig(), logFormat: "json", logLevel: slog.LevelInfo}
	var upstreamURL, region string
	fs := flag.NewFlagSet("buildlogd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	registerFlags(fs, &cfg, &upstreamURL, &region)
	cfg.security.register(fs)
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
		cfg.server.Upstream = upstreamURL
	default:
		region = cmp.Or(region, upstream.DefaultRegion)
		endpoint, err := upstream.RegionEndpoint(region)
		if err != nil {
			return nil, fmt.Errorf("--region: %w", err)
		}
		cfg.server.Upstream = endpoint
		if cfg.security.iamUser != "" && cfg.security.iamEndpoint == "" {
			cfg.security.iamEndpoint = upstream.IAMRegionEndpoint(region)
		}
	}
	switch cfg.logFormat {
	case "json", "text":
	default:
		return nil, fmt.Errorf("--log-format %q: use json or text", cfg.logFormat)
	}
	if err := cfg.security.check(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// registerFlags defines the flags of the server's settings on fs.
func registerFlags(fs *flag.FlagSet, cfg *config, upstreamURL, region *string) {
	c, ka, kp, retry := &cfg.server, &cfg.server.Keepalive, &cfg.server.KeepalivePolicy, &cfg.server.UpstreamRetry
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "listen `address` of the gRPC service")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "listen `address` of the REST mirror")
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, "listen `address` of /healthz, /readyz, /metrics (and /debug/pprof/ with --pprof); \""+server.AdminOff+"\" for none")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on the admin address")
	fs.StringVar(upstreamURL, "upstream", "", "upstream API endpoint `URL` (https://, or http:// for loopback and mesh sidecars); overrides --region")
	fs.StringVar(region, "region", "", "Huawei Cloud `region` whose CodeArts Build endpoint to use (default "+upstream.DefaultRegion+")")
	fs.Var((*byteSize)(&c.ChunkSize), "chunk-size", fmt.Sprintf("largest data `size` of one stream message, in bytes or with a KiB/MiB suffix, %s to %s",
		byteSize(service.MinChunkSize), byteSize(service.MaxChunkSize)))
	fs.IntVar(&c.MaxDownloads, "max-downloads", c.MaxDownloads, "most downloads in flight, gRPC and REST together; beyond it calls fail at once with RESOURCE_EXHAUSTED (HTTP 429)")
	fs.IntVar(&c.MaxStreamsPerConnection, "max-streams-per-connection", c.MaxStreamsPerConnection, "most calls one client connection may have open at once (HTTP/2 streams), on both listeners; further calls wait for one of its own to end")
	fs.DurationVar(&c.CallerIdleTimeout, "caller-idle-timeout", c.CallerIdleTimeout, "end a download whose caller has accepted no bytes this long, freeing its slot (retryable, with resumeOffset); 0 for never")
	fs.DurationVar(&c.FollowPollInterval, "follow-poll-interval", c.FollowPollInterval, "how often a followed download (follow=true) polls the upstream while its log grows; up to 3 times less often while it does not")
	fs.DurationVar(&c.FollowMaxDuration, "follow-max-duration", c.FollowMaxDuration, "end a followed download after this long (DEADLINE_EXCEEDED/FOLLOW_TIME_LIMIT with resumeOffset: the caller follows on with a new call)")
	fs.BoolVar(&c.SharedReads, "shared-reads", c.SharedReads, "let concurrent readers of one log share upstream reads (followers share polls, downloads ride a read in flight); each caller's access is still proven by a request of its own")
	fs.DurationVar(&c.SharedReauthorize, "shared-reauthorize", c.SharedReauthorize, "how long an upstream answer to a caller's own request proves its access to a log for shared reads; a follower is proven again after it, so a revoked token stops receiving")
	fs.Func("cors-allowed-origins", "comma-separated `origins` (or *) whose browser pages may call the REST mirror; none by default", func(v string) error {
		c.CORSAllowedOrigins = nil
		for o := range strings.SplitSeq(v, ",") {
			if o = strings.TrimSpace(o); o != "" {
				c.CORSAllowedOrigins = append(c.CORSAllowedOrigins, o)
			}
		}
		return nil
	})
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long in-flight downloads may finish after SIGTERM before they are cancelled")
	fs.DurationVar(&c.UpstreamHeaderTimeout, "upstream-header-timeout", c.UpstreamHeaderTimeout, "how long to wait for the upstream's response headers")
	fs.DurationVar(&c.UpstreamIdleTimeout, "upstream-idle-timeout", c.UpstreamIdleTimeout, "how long a download may wait for the upstream's next bytes before it fails")
	fs.DurationVar(&c.UpstreamConnectTimeout, "upstream-connect-timeout", c.UpstreamConnectTimeout, "how long opening a connection to the upstream may take, TLS handshake included")
	fs.IntVar(&retry.Attempts, "upstream-attempts", retry.Attempts, "how many times a failing upstream request is tried (502/503/504, network busy, connection errors), the first included; 1 turns retries and resumption off")
	fs.IntVar(&retry.MaxResumes, "upstream-max-resumes", retry.MaxResumes, "how many times one download may resume after the upstream's body broke off")
	fs.StringVar(&cfg.logFormat, "log-format", cfg.logFormat, "log `format`: json (one JSON object a line) or text (key=value, for humans)")
	fs.TextVar(&cfg.logLevel, "log-level", cfg.logLevel, "least `level` logged: debug, info, warn or error")
	fs.DurationVar(&ka.Time, "keepalive-time", ka.Time, "ping a client after its connection is silent this long")
	fs.DurationVar(&ka.Timeout, "keepalive-timeout", ka.Timeout, "close a connection whose ping is unanswered this long")
	fs.DurationVar(&kp.MinTime, "keepalive-min-time", kp.MinTime, "shortest interval between client pings tolerated (more often: the connection is closed with ENHANCE_YOUR_CALM)")
	fs.BoolVar(&kp.PermitWithoutStream, "keepalive-permit-without-stream", kp.PermitWithoutStream, "accept client pings on connections with no call in progress")
	fs.DurationVar(&ka.MaxConnectionAge, "max-connection-age", ka.MaxConnectionAge, "ask clients to reconnect after a connection lived this long, so L4 balancers spread them over new replicas; 0 for never")
	fs.DurationVar(&ka.MaxConnectionAgeGrace, "max-connection-age-grace", ka.MaxConnectionAgeGrace, "after --max-connection-age, how long calls in progress may finish before the connection closes; 0 for as long as they need")
	fs.BoolVar(&cfg.demo, "demo", false, "run a simulated upstream in-process with sample records and print commands to try (no cloud account needed)")
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
