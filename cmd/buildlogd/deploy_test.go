package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
)

// The parts of the Kubernetes objects in deploy/kubernetes that must agree
// with buildlogd.
type (
	labels struct{ MatchLabels map[string]string }
	port   struct {
		Name          string
		ContainerPort int
	}
	portRef struct{ intOrName string }
	probe   struct {
		GRPC *struct {
			Port    int
			Service string
		}
		HTTPGet *struct {
			Path string
			Port portRef
		}
	}
	container struct {
		Name  string
		Image string
		Args  []string
		Env   []struct{ Name, Value string }
		Ports []port

		ReadinessProbe *probe
		LivenessProbe  *probe
		Lifecycle      struct {
			PreStop struct {
				Sleep struct{ Seconds int }
			}
		}
		Resources struct {
			Requests map[string]string
			Limits   map[string]string
		}
	}
	k8sDeployment struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			Replicas int
			Selector labels
			Template struct {
				Metadata struct{ Labels map[string]string }
				Spec     struct {
					TerminationGracePeriodSeconds int
					SecurityContext               struct{ RunAsNonRoot bool }
					Containers                    []container
				}
			}
		}
	}
	k8sService struct {
		Kind string
		Spec struct {
			Selector map[string]string
			Ports    []struct {
				Name        string
				Port        int
				TargetPort  portRef
				AppProtocol string
			}
		}
	}
	k8sPDB struct {
		Kind string
		Spec struct {
			MinAvailable int
			Selector     labels
		}
	}
	k8sHPA struct {
		Kind string
		Spec struct {
			ScaleTargetRef struct{ Kind, Name string }
			MinReplicas    int
			MaxReplicas    int
		}
	}
)

// portRef is an IntOrString port: a number or a container port's name.
func (p *portRef) UnmarshalJSON(b []byte) error {
	p.intOrName = strings.Trim(string(b), `"`)
	return nil
}

func readManifest(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func addrPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return n
}

// TestKubernetesManifests checks deploy/kubernetes against buildlogd: the
// container's args and BUILDLOG_ environment parse with buildlogd's own flag
// parser, its ports are the ones those flags listen on, the probes reach the
// gRPC health service and /healthz, the grace period outlasts the shutdown
// timeout, and the Service, PodDisruptionBudget and HorizontalPodAutoscaler
// point at the Deployment.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	var d k8sDeployment
	readManifest(t, "deployment.yaml", &d)
	if d.Kind != "Deployment" || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("deployment.yaml: kind %q with %d containers, want a Deployment with one", d.Kind, len(d.Spec.Template.Spec.Containers))
	}
	c := d.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	cfg, err := parseConfig(c.Args, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil {
		t.Fatalf("buildlogd rejects the container's args %q: %v", c.Args, err)
	}

	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, addr := range map[string]string{"grpc": cfg.server.GRPCAddr, "http": cfg.server.HTTPAddr, "admin": cfg.server.AdminAddr} {
		if got, want := ports[name], addrPort(t, addr); got != want {
			t.Errorf("container port %q = %d, want %d (buildlogd listens on %s)", name, got, want, addr)
		}
	}

	if p := c.ReadinessProbe; p == nil || p.GRPC == nil || p.GRPC.Port != ports["grpc"] || p.GRPC.Service != buildlogv1.BuildLogService_ServiceDesc.ServiceName {
		t.Errorf("readiness probe %+v, want gRPC health of %s on port %d", p, buildlogv1.BuildLogService_ServiceDesc.ServiceName, ports["grpc"])
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" ||
		(p.HTTPGet.Port.intOrName != "admin" && p.HTTPGet.Port.intOrName != strconv.Itoa(ports["admin"])) {
		t.Errorf("liveness probe %+v, want GET /healthz on the admin port", p)
	}
	grace := time.Duration(d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if grace <= preStop+cfg.server.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %s, want more than preStop %s + --shutdown-timeout %s", grace, preStop, cfg.server.ShutdownTimeout)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v, want cpu and memory requests and a memory limit", c.Resources)
	}
	if !d.Spec.Template.Spec.SecurityContext.RunAsNonRoot {
		t.Error("the pod may run as root; want runAsNonRoot")
	}
	podLabels := d.Spec.Template.Metadata.Labels
	matches := func(sel map[string]string) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if !matches(d.Spec.Selector.MatchLabels) {
		t.Errorf("deployment selector %v does not match its pods' labels %v", d.Spec.Selector.MatchLabels, podLabels)
	}

	var svc k8sService
	readManifest(t, "service.yaml", &svc)
	if svc.Kind != "Service" || !matches(svc.Spec.Selector) {
		t.Errorf("service.yaml: kind %q, selector %v; want a Service selecting %v", svc.Kind, svc.Spec.Selector, podLabels)
	}
	var names []string
	for _, p := range svc.Spec.Ports {
		names = append(names, p.Name)
		if _, ok := ports[p.TargetPort.intOrName]; !ok {
			t.Errorf("service port %q targets %q, not a container port name", p.Name, p.TargetPort.intOrName)
		}
		if p.AppProtocol == "" {
			t.Errorf("service port %q has no appProtocol", p.Name)
		}
		if p.Name == "grpc" && p.AppProtocol != "kubernetes.io/h2c" {
			t.Errorf("service port grpc: appProtocol %q, want kubernetes.io/h2c", p.AppProtocol)
		}
	}
	if !slices.Equal(names, []string{"grpc", "http"}) {
		t.Errorf("service ports %v, want grpc and http (never admin: it has no TLS nor authentication)", names)
	}

	var b k8sPDB
	readManifest(t, "pdb.yaml", &b)
	if b.Kind != "PodDisruptionBudget" || !matches(b.Spec.Selector.MatchLabels) || b.Spec.MinAvailable < 1 || b.Spec.MinAvailable >= d.Spec.Replicas {
		t.Errorf("pdb.yaml: %+v; want a PodDisruptionBudget of the pods, minAvailable between 1 and the replicas (%d)", b, d.Spec.Replicas)
	}
	var h k8sHPA
	readManifest(t, "hpa.yaml", &h)
	if h.Kind != "HorizontalPodAutoscaler" || h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != d.Metadata.Name ||
		h.Spec.MinReplicas <= b.Spec.MinAvailable || h.Spec.MaxReplicas < h.Spec.MinReplicas {
		t.Errorf("hpa.yaml: %+v; want it to scale Deployment %q with more replicas than the PDB keeps", h, d.Metadata.Name)
	}
}

// TestDockerfile checks that the image exposes buildlogd's default ports
// and runs as a non-root user.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var expose []string
	var user string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "EXPOSE":
			expose = fields[1:]
		case "USER":
			user = fields[1]
		}
	}
	want := []string{
		strconv.Itoa(addrPort(t, server.DefaultConfig().GRPCAddr)),
		strconv.Itoa(addrPort(t, server.DefaultConfig().HTTPAddr)),
		strconv.Itoa(addrPort(t, server.DefaultConfig().AdminAddr)),
	}
	if !slices.Equal(expose, want) {
		t.Errorf("EXPOSE %v, want buildlogd's default ports %v", expose, want)
	}
	if user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") {
		t.Errorf("USER %q, want a non-root user", user)
	}
}
