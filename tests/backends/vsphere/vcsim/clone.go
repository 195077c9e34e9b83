package main

// cloner answers InstantClone_Task and CloneVM_Task for one VM. The front rewrites the
// request's _this from VirtualMachine:vm-N to ForkproxyCloner:vm-N, so the simulator's own
// dispatcher calls us (session checked, fault encoding as usual) without replacing the VM
// object in the registry (the property collector and snapshots assert *VirtualMachine).
//
// Semantics follow vSphere rather than govmomi 0.24.2's CloneVM_Task:
//   - InstantClone_Task: the source must be powered on; the clone is powered on; the
//     source's extraConfig is inherited (so RUN.container starts the clone's own container)
//     and the spec's config (guestinfo.*) is merged over it; placement from spec.location.
//   - CloneVM_Task: same extraConfig inheritance, honours spec.powerOn, checks spec.snapshot.
// Tasks complete asynchronously, as on vCenter: the caller waits through the PropertyCollector.

import (
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const clonerType = "ForkproxyCloner"

type cloner struct {
	mo.ExtensibleManagedObject // first field: the property collector digs for an mo type

	vm types.ManagedObjectReference
}

// ensureCloner registers the cloner for a VM moref value (idempotent).
func ensureCloner(vmValue string) {
	ref := types.ManagedObjectReference{Type: clonerType, Value: vmValue}
	if simulator.Map.Get(ref) != nil {
		return
	}
	c := &cloner{vm: types.ManagedObjectReference{Type: "VirtualMachine", Value: vmValue}}
	c.Self = ref
	simulator.Map.Put(c)
}

func (c *cloner) source(ctx *simulator.Context) (*simulator.VirtualMachine, *soap.Fault) {
	vm, ok := ctx.Map.Get(c.vm).(*simulator.VirtualMachine)
	if !ok {
		return nil, simulator.Fault("", &types.ManagedObjectNotFound{Obj: c.vm})
	}
	return vm, nil
}

func (c *cloner) InstantCloneTask(ctx *simulator.Context, req *types.InstantClone_Task) soap.HasFault {
	body := &methods.InstantClone_TaskBody{}
	vm, fault := c.source(ctx)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	spec := req.Spec
	task := startTask(vm, "instantClone", func() (types.AnyType, types.BaseMethodFault) {
		var state types.VirtualMachinePowerState
		simulator.Map.WithLock(vm, func() { state = vm.Runtime.PowerState })
		if state != types.VirtualMachinePowerStatePoweredOn {
			return nil, &types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOn,
				ExistingState:  state,
			}
		}
		return cloneAndPowerOn(ctx, vm, spec.Name, spec.Location, spec.Config, true)
	})
	body.Res = &types.InstantClone_TaskResponse{Returnval: task.Self}
	return body
}

func (c *cloner) CloneVMTask(ctx *simulator.Context, req *types.CloneVM_Task) soap.HasFault {
	body := &methods.CloneVM_TaskBody{}
	vm, fault := c.source(ctx)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	spec := req.Spec
	if spec.Location.Folder == nil {
		folder := req.Folder
		spec.Location.Folder = &folder
	}
	var extra []types.BaseOptionValue
	if spec.Config != nil {
		extra = spec.Config.ExtraConfig
	}
	task := startTask(vm, "cloneVm", func() (types.AnyType, types.BaseMethodFault) {
		if spec.Snapshot != nil {
			snap, ok := simulator.Map.Get(*spec.Snapshot).(*simulator.VirtualMachineSnapshot)
			if !ok || snap.Vm != vm.Self {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.snapshot"}
			}
		}
		return cloneAndPowerOn(ctx, vm, req.Name, spec.Location, extra, spec.PowerOn)
	})
	body.Res = &types.CloneVM_TaskResponse{Returnval: task.Self}
	return body
}

// startTask queues a Task on the entity and completes it in the background.
func startTask(entity mo.Reference, name string, work func() (types.AnyType, types.BaseMethodFault)) *simulator.Task {
	var res types.AnyType
	var fault types.BaseMethodFault
	task := simulator.CreateTask(entity, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return res, fault
	})
	go func() {
		res, fault = work()
		// Run publishes running → success/error through Map.Update (property collector sees it).
		simulator.Map.WithLock(task, func() { task.Run() })
	}()
	return task
}

// cloneAndPowerOn drives the simulator's own CloneVM_Task (inventory, files, devices,
// events), then powers the clone on (RUN.container → docker run of the clone's container).
func cloneAndPowerOn(ctx *simulator.Context, vm *simulator.VirtualMachine, name string,
	loc types.VirtualMachineRelocateSpec, config []types.BaseOptionValue, powerOn bool,
) (types.AnyType, types.BaseMethodFault) {
	var folder types.ManagedObjectReference
	var extra []types.BaseOptionValue
	simulator.Map.WithLock(vm, func() {
		if loc.Folder != nil {
			folder = *loc.Folder
		} else {
			folder = *vm.Parent
		}
		if loc.Pool == nil {
			loc.Pool = vm.ResourcePool
		}
		extra = mergeExtraConfig(vm.Config.ExtraConfig, config)
	})
	if _, ok := simulator.Map.Get(folder).(mo.Entity); !ok {
		return nil, &types.ManagedObjectNotFound{Obj: folder}
	}
	if loc.Datastore != nil {
		if _, ok := simulator.Map.Get(*loc.Datastore).(*simulator.Datastore); !ok {
			return nil, &types.ManagedObjectNotFound{Obj: *loc.Datastore}
		}
	}
	if loc.Pool != nil && simulator.Map.Get(*loc.Pool) == nil {
		return nil, &types.ManagedObjectNotFound{Obj: *loc.Pool}
	}

	req := &types.CloneVM_Task{
		This:   vm.Self,
		Folder: folder,
		Name:   name,
		Spec: types.VirtualMachineCloneSpec{
			Location: loc,
			Config:   &types.VirtualMachineConfigSpec{ExtraConfig: extra},
		},
	}
	var res soap.HasFault
	simulator.Map.WithLock(vm, func() { res = vm.CloneVMTask(ctx, req) })
	info := taskInfo(res.(*methods.CloneVM_TaskBody).Res.Returnval)
	if info.Error != nil {
		return nil, info.Error.Fault
	}
	ref := info.Result.(types.ManagedObjectReference)
	if !powerOn {
		return ref, nil
	}

	clone := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	simulator.Map.WithLock(clone, func() {
		res = clone.PowerOnVMTask(ctx, &types.PowerOnVM_Task{This: ref})
	})
	info = taskInfo(res.(*methods.PowerOnVM_TaskBody).Res.Returnval)
	if info.Error != nil {
		return nil, info.Error.Fault
	}
	// container.go writes the container's IP straight into the struct; publish it so
	// WaitForUpdatesEx callers see a change, as vCenter does when VMware Tools reports.
	// With a guest IP delay set, the IP shows up that long after the task completes.
	var ip string
	delay := guestIPDelay()
	simulator.Map.WithLock(clone, func() {
		ip = clone.Guest.IpAddress
		if ip != "" && delay > 0 {
			setGuestIP(clone, "")
		}
	})
	if ip != "" {
		if delay > 0 {
			go func() {
				time.Sleep(delay)
				if c, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
					simulator.Map.WithLock(c, func() { setGuestIP(c, ip) })
				}
			}()
		} else {
			simulator.Map.WithLock(clone, func() { setGuestIP(clone, ip) })
		}
	}
	return ref, nil
}

func setGuestIP(vm *simulator.VirtualMachine, ip string) {
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.ipAddress", Val: ip},
		{Name: "summary.guest.ipAddress", Val: ip},
	})
}

var ipDelay atomic.Int64 // nanoseconds; set through POST /forkproxy/guest-ip-delay?ms=N

func guestIPDelay() time.Duration { return time.Duration(ipDelay.Load()) }

func taskInfo(ref types.ManagedObjectReference) types.TaskInfo {
	return simulator.Map.Get(ref).(*simulator.Task).Info
}

// mergeExtraConfig copies the source's options and lays the spec's over them by key.
func mergeExtraConfig(base, over []types.BaseOptionValue) []types.BaseOptionValue {
	index := map[string]int{}
	out := make([]types.BaseOptionValue, 0, len(base)+len(over))
	for _, list := range [][]types.BaseOptionValue{base, over} {
		for _, o := range list {
			v := o.GetOptionValue()
			cp := &types.OptionValue{Key: v.Key, Value: v.Value}
			if i, ok := index[v.Key]; ok {
				out[i] = cp
				continue
			}
			index[v.Key] = len(out)
			out = append(out, cp)
		}
	}
	return out
}
