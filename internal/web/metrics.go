package web

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are a Model's Prometheus metrics, in a private registry: the
// counters and histograms are fed by Apply, the gauges are read from the
// model at scrape time.
type metrics struct {
	reg             *prometheus.Registry
	starts          prometheus.Counter
	attemptFailures prometheus.Counter
	finishes        *prometheus.CounterVec
	launch          prometheus.Histogram
	report          prometheus.Histogram
	staged          prometheus.Counter
}

// Buckets from 1ms to about 2 minutes.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 14)

func newMetrics(m *Model) *metrics {
	x := &metrics{
		reg: prometheus.NewRegistry(),
		starts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_instance_starts_total",
			Help: "Attempts of instances that started.",
		}),
		attemptFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_attempt_failures_total",
			Help: "Failed or lost attempts that were retried.",
		}),
		finishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_instance_finishes_total",
			Help: "Instances that reached a final state, by outcome (succeeded, failed, lost, cancelled).",
		}, []string{"outcome"}),
		launch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_launch_latency_seconds",
			Help:    "Time from an instance's hwthreads becoming free (the previous instance on them ended, or the run started) to its start.",
			Buckets: latencyBuckets,
		}),
		report: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_time_to_report_seconds",
			Help:    "Time from a process's exit on its node to its final event in the results log (observed by drover serve, which can ask for the exit time).",
			Buckets: latencyBuckets,
		}),
		staged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_staged_bytes_total",
			Help: "Bytes of files staged to nodes (not measured yet: always 0).",
		}),
	}
	for _, o := range []string{"succeeded", "failed", "lost", "cancelled"} {
		x.finishes.WithLabelValues(o)
	}
	x.reg.MustRegister(x.starts, x.attemptFailures, x.finishes, x.launch, x.report, x.staged, &stateCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "drover_manager"}))
	return x
}

// ObserveReport records one time-to-report (in seconds).
func (m *Model) ObserveReport(seconds float64) { m.metrics.report.Observe(seconds) }

var (
	nodesDesc     = prometheus.NewDesc("drover_nodes", "Nodes by state.", []string{"state"}, nil)
	instancesDesc = prometheus.NewDesc("drover_instances", "Instances by state.", []string{"state"}, nil)
	rttDesc       = prometheus.NewDesc("drover_node_heartbeat_rtt_seconds", "Round-trip time of the latest heartbeat to the node's agent.", []string{"node"}, nil)
	procsDesc     = prometheus.NewDesc("drover_node_processes", "Processes the node's agent runs for drover.", []string{"node"}, nil)
	hwDesc        = prometheus.NewDesc("drover_node_hwthreads", "Hardware threads the node offers.", []string{"node"}, nil)
	busyDesc      = prometheus.NewDesc("drover_node_busy_hwthreads", "Hardware threads reserved on the node.", []string{"node"}, nil)
	memDesc       = prometheus.NewDesc("drover_node_memory_bytes", "Memory of the node, as its agent reported it.", []string{"node"}, nil)
	gpusDesc      = prometheus.NewDesc("drover_node_gpus", "GPUs the node offers.", []string{"node"}, nil)
	busyGPUsDesc  = prometheus.NewDesc("drover_node_busy_gpus", "GPUs reserved on the node.", []string{"node"}, nil)
)

// stateCollector reads the gauges from the model at scrape time.
type stateCollector struct{ m *Model }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{nodesDesc, instancesDesc, rttDesc, procsDesc, hwDesc, busyDesc, memDesc, gpusDesc, busyGPUsDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	nodes := m.nodes
	inst := map[string]int{StatePending: 0, StateRunning: 0, "succeeded": 0, "failed": 0, "lost": 0, "cancelled": 0}
	for _, p := range m.byName {
		inst[p.State]++
	}
	m.mu.Unlock()
	byState := map[string]int{"up": 0, "busy": 0, "disconnected": 0, "lost": 0}
	for _, n := range nodes {
		byState[n.State]++
		hw := 0
		for _, c := range n.Cores {
			hw += len(c)
		}
		ch <- prometheus.MustNewConstMetric(procsDesc, prometheus.GaugeValue, float64(n.Processes), n.Name)
		ch <- prometheus.MustNewConstMetric(hwDesc, prometheus.GaugeValue, float64(hw), n.Name)
		ch <- prometheus.MustNewConstMetric(busyDesc, prometheus.GaugeValue, float64(len(n.Busy)), n.Name)
		if n.MemoryBytes > 0 {
			ch <- prometheus.MustNewConstMetric(memDesc, prometheus.GaugeValue, float64(n.MemoryBytes), n.Name)
		}
		if n.GPUs > 0 {
			ch <- prometheus.MustNewConstMetric(gpusDesc, prometheus.GaugeValue, float64(n.GPUs), n.Name)
			ch <- prometheus.MustNewConstMetric(busyGPUsDesc, prometheus.GaugeValue, float64(n.BusyGPUs), n.Name)
		}
		if n.State != "lost" && n.RTTSeconds > 0 {
			ch <- prometheus.MustNewConstMetric(rttDesc, prometheus.GaugeValue, n.RTTSeconds, n.Name)
		}
	}
	for s, v := range byState {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(v), s)
	}
	for s, v := range inst {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(v), s)
	}
}
