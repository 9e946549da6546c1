// Package faults holds fault-injection tests of the real drover binary:
// agents and managers killed or stopped mid-run, and garbage on the
// manager's port. It has no non-test code.
package faults
