// Package chaos holds a chaos suite for the real drover binary on the
// multi-host test bed (scripts/testbed): links cut for short and long
// outages, an agent SIGKILLed or stopped on a host, the manager SIGKILLed
// and the run resumed, daemons that escape their job, jobs that ignore
// SIGTERM, a gigabyte of output over ssh, a host with a read-only scratch
// directory and random SIGKILLs of job processes in a large run. Every
// scenario checks events.jsonl and summary.json (each instance accounted
// for exactly once) and that no job process and no agent is left on any
// host; measured figures are logged as "MEASURE:" lines, which
// scripts/chaos-rounds gathers over several rounds.
// The package has tests only.
package chaos
