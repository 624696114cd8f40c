package tests

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The autoscaling/v2 HorizontalPodAutoscaler as the API defines it
// (k8s.io/api/autoscaling/v2, types.go), every field the API has at the
// levels hpa.yaml uses: decoding with KnownFields refuses a misspelled or
// misplaced key the way the API server's strict field validation does.
// Debian's kubernetes-client (1.20) predates autoscaling/v2 and needs a
// server for --dry-run validation, so this test is the schema check.
type hpa struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Namespace   string            `yaml:"namespace"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			Name       string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		MinReplicas *int          `yaml:"minReplicas"`
		MaxReplicas int           `yaml:"maxReplicas"`
		Metrics     []metricSpec  `yaml:"metrics"`
		Behavior    *hpaBehaviour `yaml:"behavior"`
	} `yaml:"spec"`
}

type metricIdentifier struct {
	Name     string         `yaml:"name"`
	Selector map[string]any `yaml:"selector"`
}

type metricTarget struct {
	Type               string `yaml:"type"`
	Value              string `yaml:"value"`
	AverageValue       string `yaml:"averageValue"`
	AverageUtilization *int   `yaml:"averageUtilization"`
}

type metricSpec struct {
	Type string `yaml:"type"`
	Pods *struct {
		Metric metricIdentifier `yaml:"metric"`
		Target metricTarget     `yaml:"target"`
	} `yaml:"pods"`
	Resource *struct {
		Name   string       `yaml:"name"`
		Target metricTarget `yaml:"target"`
	} `yaml:"resource"`
	Object *struct {
		DescribedObject map[string]any   `yaml:"describedObject"`
		Metric          metricIdentifier `yaml:"metric"`
		Target          metricTarget     `yaml:"target"`
	} `yaml:"object"`
	External *struct {
		Metric metricIdentifier `yaml:"metric"`
		Target metricTarget     `yaml:"target"`
	} `yaml:"external"`
	ContainerResource *struct {
		Name      string       `yaml:"name"`
		Container string       `yaml:"container"`
		Target    metricTarget `yaml:"target"`
	} `yaml:"containerResource"`
}

type scalingRules struct {
	StabilizationWindowSeconds *int   `yaml:"stabilizationWindowSeconds"`
	SelectPolicy               string `yaml:"selectPolicy"`
	Policies                   []struct {
		Type          string `yaml:"type"`
		Value         int    `yaml:"value"`
		PeriodSeconds int    `yaml:"periodSeconds"`
	} `yaml:"policies"`
}

type hpaBehaviour struct {
	ScaleUp   *scalingRules `yaml:"scaleUp"`
	ScaleDown *scalingRules `yaml:"scaleDown"`
}

// quantityRE is a Kubernetes resource.Quantity (decimal, optional suffix).
var quantityRE = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$`)

func (t metricTarget) check(where string) error {
	switch t.Type {
	case "Utilization":
		if t.AverageUtilization == nil || *t.AverageUtilization < 1 {
			return errors.New(where + ": target type Utilization needs averageUtilization ≥ 1")
		}
	case "AverageValue":
		if !quantityRE.MatchString(t.AverageValue) {
			return errors.New(where + ": target type AverageValue needs averageValue, a quantity; got " + t.AverageValue)
		}
	case "Value":
		if !quantityRE.MatchString(t.Value) {
			return errors.New(where + ": target type Value needs value, a quantity")
		}
	default:
		return errors.New(where + ": target type must be Utilization, Value or AverageValue, got " + t.Type)
	}
	return nil
}

// TestKubernetesHPAManifest checks deploy/kubernetes/hpa.yaml against the
// autoscaling/v2 schema and against what it refers to: the Deployment in
// berth.yaml, berth's queue-depth metric, the admin port Prometheus scrapes.
func TestKubernetesHPAManifest(t *testing.T) {
	dir := filepath.Join(repoRoot(), "deploy", "kubernetes")
	data, err := os.ReadFile(filepath.Join(dir, "hpa.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var h hpa
	if err := dec.Decode(&h); err != nil {
		t.Fatalf("hpa.yaml is not an autoscaling/v2 HorizontalPodAutoscaler: %v", err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		t.Fatalf("hpa.yaml holds more than one document: %v", err)
	}
	if h.APIVersion != "autoscaling/v2" || h.Kind != "HorizontalPodAutoscaler" || h.Metadata.Name == "" {
		t.Fatalf("apiVersion %q kind %q name %q", h.APIVersion, h.Kind, h.Metadata.Name)
	}
	sp := h.Spec
	if sp.MinReplicas == nil || *sp.MinReplicas < 1 || sp.MaxReplicas < *sp.MinReplicas {
		t.Errorf("replicas: min %v max %d", sp.MinReplicas, sp.MaxReplicas)
	}
	if len(sp.Metrics) == 0 {
		t.Fatal("no metrics")
	}
	queue := false
	for i, m := range sp.Metrics {
		set := 0
		for _, p := range []bool{m.Pods != nil, m.Resource != nil, m.Object != nil, m.External != nil, m.ContainerResource != nil} {
			if p {
				set++
			}
		}
		where := "metrics[" + string(rune('0'+i)) + "]"
		if set != 1 {
			t.Errorf("%s: exactly one source must be set, got %d", where, set)
		}
		switch m.Type {
		case "Pods":
			if m.Pods == nil || m.Pods.Metric.Name == "" {
				t.Errorf("%s: type Pods needs pods.metric.name", where)
				continue
			}
			if m.Pods.Target.Type != "AverageValue" {
				t.Errorf("%s: a Pods metric's target must be AverageValue", where)
			}
			if err := m.Pods.Target.check(where); err != nil {
				t.Error(err)
			}
			queue = queue || m.Pods.Metric.Name == "berth_queue_depth"
		case "Resource":
			if m.Resource == nil || (m.Resource.Name != "cpu" && m.Resource.Name != "memory") {
				t.Errorf("%s: type Resource needs resource.name cpu or memory", where)
				continue
			}
			if err := m.Resource.Target.check(where); err != nil {
				t.Error(err)
			}
		default:
			t.Errorf("%s: type %q is not used by this manifest's checks; add it", where, m.Type)
		}
	}
	if !queue {
		t.Error("no Pods metric on berth_queue_depth")
	}
	if b := sp.Behavior; b != nil {
		for name, r := range map[string]*scalingRules{"scaleUp": b.ScaleUp, "scaleDown": b.ScaleDown} {
			if r == nil {
				continue
			}
			if w := r.StabilizationWindowSeconds; w != nil && (*w < 0 || *w > 3600) {
				t.Errorf("%s.stabilizationWindowSeconds %d: 0..3600", name, *w)
			}
			for _, p := range r.Policies {
				if (p.Type != "Pods" && p.Type != "Percent") || p.Value < 1 || p.PeriodSeconds < 1 || p.PeriodSeconds > 1800 {
					t.Errorf("%s policy %+v: type Pods or Percent, value ≥ 1, periodSeconds 1..1800", name, p)
				}
			}
		}
	}

	// What it refers to: the Deployment, the metric, the scraped port.
	manifest, err := os.ReadFile(filepath.Join(dir, "berth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var deployment struct {
		Spec struct {
			Template struct {
				Metadata struct {
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"metadata"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	found, adminPort := false, ""
	dec = yaml.NewDecoder(bytes.NewReader(manifest))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		meta, _ := doc["metadata"].(map[string]any)
		if doc["kind"] == "Deployment" && doc["apiVersion"] == sp.ScaleTargetRef.APIVersion && meta["name"] == sp.ScaleTargetRef.Name && sp.ScaleTargetRef.Kind == "Deployment" {
			found = true
			b, _ := yaml.Marshal(doc)
			if err := yaml.Unmarshal(b, &deployment); err != nil {
				t.Fatal(err)
			}
		}
		if doc["kind"] == "ConfigMap" {
			cfg, _ := doc["data"].(map[string]any)["berth.yaml"].(string)
			if m := regexp.MustCompile(`(?m)^\s+listen: ":(\d+)"`).FindStringSubmatch(cfg); m != nil {
				adminPort = m[1]
			}
		}
	}
	if !found {
		t.Errorf("scaleTargetRef %+v names no Deployment in berth.yaml", sp.ScaleTargetRef)
	}
	if got := deployment.Spec.Template.Metadata.Annotations["prometheus.io/port"]; got == "" || got != adminPort {
		t.Errorf("the pod's prometheus.io/port %q is not admin.listen's port %q", got, adminPort)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot(), "proxy", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), `"berth_queue_depth"`) {
		t.Error("the proxy no longer exports berth_queue_depth, which the HPA scales on")
	}
}

// probe is the part of a Kubernetes Probe the manifest check reads; the
// handler fields other than exec are there to be refused.
type probe struct {
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	HTTPGet        map[string]any `yaml:"httpGet"`
	TCPSocket      map[string]any `yaml:"tcpSocket"`
	GRPC           map[string]any `yaml:"grpc"`
	TimeoutSeconds int            `yaml:"timeoutSeconds"`
}

// TestKubernetesProbes: the Deployment's probes are commands that work in
// berth's image (no curl there, and podman kube play runs an httpGet probe
// as curl in the container): readiness `berth status --quiet`, liveness
// `berth status --live`, both with --admin on loopback at admin.listen's
// port so that they read no config (a broken ConfigMap update must not fail
// them), and a timeout above the admin endpoint's own 2 s wait for the
// supervisor. TestContainer/kube-play runs them in the played pods.
func TestKubernetesProbes(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "kubernetes", "berth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	adminPort, containers := "", 0
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name      string `yaml:"name"`
							Readiness *probe `yaml:"readinessProbe"`
							Liveness  *probe `yaml:"livenessProbe"`
							Startup   *probe `yaml:"startupProbe"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if doc.Kind == "ConfigMap" {
			var cfg struct {
				Admin struct {
					Listen string `yaml:"listen"`
				} `yaml:"admin"`
			}
			if err := yaml.Unmarshal([]byte(doc.Data["berth.yaml"]), &cfg); err != nil {
				t.Fatalf("the ConfigMap's berth.yaml: %v", err)
			}
			adminPort = cfg.Admin.Listen[strings.LastIndex(cfg.Admin.Listen, ":")+1:]
		}
		if doc.Kind != "Deployment" {
			continue
		}
		for _, c := range doc.Spec.Template.Spec.Containers {
			containers++
			for _, p := range []struct {
				kind, flag string
				p          *probe
			}{{"readinessProbe", "--quiet", c.Readiness}, {"livenessProbe", "--live", c.Liveness}, {"startupProbe", "", c.Startup}} {
				where := c.Name + "." + p.kind
				if p.p == nil {
					if p.flag != "" {
						t.Errorf("%s missing", where)
					}
					continue
				}
				if p.p.HTTPGet != nil || p.p.TCPSocket != nil || p.p.GRPC != nil || p.p.Exec == nil {
					t.Errorf("%s: want an exec probe (berth status), not httpGet/tcpSocket/grpc: the image has no curl", where)
					continue
				}
				cmd := strings.Join(p.p.Exec.Command, " ")
				if !strings.HasPrefix(cmd, "berth status ") || (p.flag != "" && !ctContains(p.p.Exec.Command, p.flag)) {
					t.Errorf("%s: command %q, want berth status %s", where, cmd, p.flag)
				}
				if want := "--admin 127.0.0.1:" + adminPort; adminPort == "" || !strings.Contains(cmd, want) {
					t.Errorf("%s: command %q lacks %q (admin.listen's port on loopback)", where, cmd, want)
				}
				if p.p.TimeoutSeconds < 3 {
					t.Errorf("%s: timeoutSeconds %d; the default 1 s is shorter than the admin endpoint's 2 s wait for the supervisor", where, p.p.TimeoutSeconds)
				}
			}
		}
	}
	if containers == 0 {
		t.Fatal("no Deployment container in berth.yaml")
	}
}
